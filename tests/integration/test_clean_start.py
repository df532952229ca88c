"""`chater-gpt worker` starting against what is not there yet: one clear line per
attempt naming the setting, no traceback, no flood, no secret, SIGTERM honoured
during the wait; and replicas that start together on an empty database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from devkit.embedded_broker import free_loopback_port
from tests.support.records import private_topics, produce, read
from tests.support.worker import WorkerProcess, start_together

pytestmark = pytest.mark.integration

WAIT = 10.0


def start_worker(tmp_path, **settings: str) -> tuple[subprocess.Popen[bytes], WorkerProcess]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PG"))},
        "MODEL_PROVIDER": "offline", "SECRET_KEY": "start-secret", "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO", "DATABASE_URL": f"sqlite:///{tmp_path}/events.sqlite",
        **settings,
    }
    worker = WorkerProcess(env, tmp_path / "worker.log")
    log = open(worker.log_path, "ab")  # noqa: SIM115 - the process keeps its own copy
    process = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "worker"], env=worker.env, cwd=tmp_path,
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )
    log.close()
    return process, worker


def waits_cleanly_and_stops_on_sigterm(tmp_path, variable: str, **settings: str) -> list[str]:
    """Start a worker whose dependency is missing, watch it for WAIT seconds, check
    it lives and stops at once on SIGTERM; its log lines."""
    process, worker = start_worker(tmp_path, **settings)
    try:
        time.sleep(WAIT)
        assert process.poll() is None, worker.log()
        status, body = worker.liveness()
        assert status == 200, body
        assert worker.readiness()[0] == 503
        process.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        code = process.wait(10)
        assert time.monotonic() - asked < 5, "SIGTERM was not honoured within 5 s"
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = worker.log().splitlines()
    waiting = [line for line in lines if "cannot reach" in line and f"{variable}=" in line]
    assert waiting, "\n".join(lines)
    assert "Traceback" not in worker.log()
    assert len(lines) < 15, "\n".join(lines)  # a line per attempt, not librdkafka's flood
    assert any("stopped while waiting" in line for line in lines)
    return lines


def test_an_unreachable_broker_is_named_and_waited_for_until_sigterm(tmp_path):
    closed = free_loopback_port()
    lines = waits_cleanly_and_stops_on_sigterm(
        tmp_path, "BOOTSTRAP_SERVER", BOOTSTRAP_SERVER=f"127.0.0.1:{closed}",
        KAFKA_SASL_PASSWORD="kafka-hunter2",
    )
    assert not any("kafka-hunter2" in line for line in lines)
    assert not any("rdkafka" in line or "FAIL|" in line for line in lines), "\n".join(lines)


def test_an_unreachable_database_is_named_without_its_password_and_waited_for(tmp_path):
    closed = free_loopback_port()
    lines = waits_cleanly_and_stops_on_sigterm(
        tmp_path, "DATABASE_URL",
        DATABASE_URL=f"postgresql://chater:db-hunter2@127.0.0.1:{closed}/chat?sslmode=disable",
        BOOTSTRAP_SERVER=f"127.0.0.1:{free_loopback_port()}",
    )
    assert not any("db-hunter2" in line for line in lines), "\n".join(lines)
    assert any("postgresql://chater:***@127.0.0.1" in line for line in lines)


def test_sigterm_ends_an_attempt_that_hangs(tmp_path):
    """A database that accepts the connection and never answers: the attempt is
    bounded, and SIGTERM does not wait for it."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        process, worker = start_worker(
            tmp_path, DATABASE_URL=f"postgresql://chater@127.0.0.1:{port}/chat",
            BOOTSTRAP_SERVER=f"127.0.0.1:{free_loopback_port()}",
        )
        # Inside the first attempt (3 s): /healthz answers once the loop handles
        # signals, which is just before the wait for the database begins. No fixed
        # sleep: on a loaded machine the start can take longer than any guess.
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, worker.log()
            try:
                if worker.liveness(timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        assert process.wait(10) == 0, worker.log()
        assert time.monotonic() - asked < 5
        assert "Traceback" not in worker.log()
    finally:
        silent.close()


def test_a_replica_waits_for_the_schema_lock_with_a_line_per_try(postgres, caplog):
    """Another replica holds the lock (and hangs): the start waits, says so on each
    try, and goes on once the lock is free. The lock is a transaction's: behind a
    transaction-pooling PgBouncer it cannot outlive the block."""
    import logging

    from adapters.event_store import persistence_env
    from adapters.postgres_setup import SCHEMA_LOCK_KEY, schema_lock

    database = f"chat_lock_{os.getpid()}_{int(time.time())}"
    postgres.create_database(database)
    env = persistence_env(postgres.url(database))
    inside = threading.Event()
    failures: list[BaseException] = []

    def replica() -> None:
        try:
            with schema_lock(env):
                inside.set()
        except BaseException as error:
            failures.append(error)

    caplog.set_level(logging.INFO, logger="chater-gpt")
    with psycopg.connect(postgres.dsn(database), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        waiting = threading.Thread(target=replica, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 20
        while sum("waiting for another replica" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, caplog.text
            assert waiting.is_alive(), failures
            time.sleep(0.1)
        assert not inside.is_set()
        other.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
        waiting.join(20)
        assert inside.is_set() and not failures, failures
        # Released with the block's transaction: another session takes it at once.
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (SCHEMA_LOCK_KEY,)).fetchone()[0]
        other.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
    lines = [r.getMessage() for r in caplog.records if "advisory lock" in r.getMessage()]
    assert lines and all("attempt" in line for line in lines)


def test_replicas_started_at_once_on_an_empty_database_all_come_up(
    broker, postgres, fake_openai, tmp_path
):
    database = f"chat_start_{os.getpid()}_{int(time.time())}"
    postgres.create_database(database)
    topics = private_topics(broker.bootstrap_server, request_partitions=3)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_PROVIDER", "DATABASE_URL"}},
        **topics,
        "BOOTSTRAP_SERVER": broker.bootstrap_server,
        # Its options reach psycopg: the server sees the application name.
        "DATABASE_URL": postgres.url(database) + "?sslmode=disable&application_name=chater-test",
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake_openai.base_url,
        "SECRET_KEY": "replicas-secret", "MAX_RETRIES": "0", "REQUESTS_PER_MINUTE": "0",
        "LOG_LEVEL": "INFO",
    }
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        start_together(workers, 120)
        for worker in workers:
            assert worker.process is not None and worker.process.poll() is None, worker.log()
            assert "Traceback" not in worker.log() and "IntegrityError" not in worker.log()
        with psycopg.connect(postgres.dsn(database)) as connection:
            names = {row[0] for row in connection.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (database,)
            )}
        assert "chater-test" in names, names

        keys = [f"r-{n}" for n in range(6)]
        produce(broker, topics["REQUEST_TOPIC"], [
            (key, json.dumps({"user_email": f"{key}@example.com", "message": key}).encode())
            for key in keys
        ])
        answers = dict(read(broker, topics["RESPONSE_TOPIC"], len(keys)))
        assert sorted(answers) == keys
        assert all("response" in answer for answer in answers.values()), answers
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.stop(signal.SIGKILL)
