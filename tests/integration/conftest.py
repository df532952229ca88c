"""Fixtures of the integration tests: private topics, a database, a worker process."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from tests.support.records import private_topics
from tests.support.worker import WorkerProcess


@pytest.fixture
def topics(broker) -> dict[str, str]:
    return private_topics(broker.bootstrap_server)


@pytest.fixture
def database(postgres) -> str:
    name = f"chat_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    return name


@pytest.fixture
def worker_env(broker, postgres, database, fake_openai, topics) -> dict[str, str]:
    """The environment an operator would give `chater-gpt worker`."""
    return {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_PROVIDER", "DATABASE_URL"}},
        **topics,
        "BOOTSTRAP_SERVER": broker.bootstrap_server,
        "DATABASE_URL": postgres.url(database),
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "SECRET_KEY": "integration-secret",
        "MAX_RETRIES": "0",
        "REQUESTS_PER_MINUTE": "0",
        "MAX_TOKENS": "500",
        "DAILY_TOKEN_LIMIT": "100000000",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def worker(worker_env, tmp_path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(worker_env, tmp_path / "worker.log")
    process.start()
    yield process
    if process.process is not None:
        process.stop(signal.SIGKILL)


@pytest.fixture
def in_process_settings(fake_openai, tmp_path) -> dict[str, object]:
    """Settings for an in-process RunningWorker (tests/support/worker.py): the local
    model server and a SQLite store of the test's own."""
    return {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/events.sqlite",
    }
