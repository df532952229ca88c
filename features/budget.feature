Feature: The daily token budget is never exceeded
  Operators set DAILY_TOKEN_LIMIT. Every request reserves its worst case before
  the model is called; a request that would go past the limit is refused.

  Scenario: The budget stops a request
    Given the chat worker is running with a daily limit of 250 tokens and max_tokens 200
    When ada@example.com asks "How far is the moon?" as request "b-1"
    And ada@example.com asks "And the sun?" as request "b-2" after the first answer
    Then request "b-1" is answered with "echo: How far is the moon? | seen: 1 messages"
    And request "b-2" gets a "budget_exceeded" error saying "daily token budget"
    And the model was called once
