"""Shared pytest fixtures: real local services, started lazily once per session.

Each service starts the first time a test asks for its fixture and is always
stopped at the end of the session (try/finally), also when tests fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from devkit.embedded_broker import CLIENT_ENVIRONMENT, EmbeddedBroker
from tests.support.broker_outage import ProxiedBroker
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer


# The clients of the tests' embedded broker (workers in this process and in child
# processes, the helpers) get its settings the way an operator's would come.
for _name, _value in CLIENT_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integration`` marker (harmless if pyproject declares it too)."""
    config.addinivalue_line("markers", "integration: test uses real local services (Kafka broker, PostgreSQL, Redis, fake OpenAI)")


def _running(server):
    """Start a service for the session and stop it whatever happens."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """An in-memory Tansu Kafka broker on a loopback port."""
    yield from _running(EmbeddedBroker())


@pytest.fixture(scope="session")
def flaky_broker() -> Iterator[ProxiedBroker]:
    """A second broker that tests can make unreachable (cut, outage) and bring back."""
    yield from _running(ProxiedBroker())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server; create a database per test with ``create_database``."""
    yield from _running(PostgresServer())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server; tests get an emptied one through ``redis_url``."""
    yield from _running(RedisServer())


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of the session's Redis server, emptied (FLUSHALL) for this test; a server
    the test hung or stopped for an outage is brought back afterwards."""
    with redis.Redis.from_url(redis_server.url, socket_timeout=5) as client:
        client.flushall()
    try:
        yield redis_server.url
    finally:
        redis_server.unhang()
        redis_server.restart()  # a no-op when it is running


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI server, shared by the whole session."""
    yield from _running(FakeOpenAIServer())


@pytest.fixture
def fake_openai(openai_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI server with no script, no recorded requests and default latency."""
    openai_server.reset()
    yield openai_server
