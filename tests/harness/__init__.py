"""Self-tests of the test harness: the embedded broker, the outage proxy, PostgreSQL and
the fake OpenAI server behave as the product tests rely on."""
