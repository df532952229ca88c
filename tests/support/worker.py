"""A real KafkaWorker on private topics, run in a background thread for a test."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.kafka import ensure_topics, producer_config, reader_config
from devkit.embedded_broker import free_loopback_port
from entrypoints.container import Container
from entrypoints.settings import load_settings
from entrypoints.worker_runtime import WorkerRuntime


class RunningWorker:
    """Starts the worker the CLI would assemble (WorkerRuntime), from settings,
    without its health server and usage catch-up.

    Each instance gets its own topics and consumer group, so tests sharing one
    broker never see each other's records.
    """

    def __init__(
        self,
        bootstrap_server: str,
        customise: Callable[[Container], None] | None = None,
        serve_health: bool = False,
        **settings: Any,
    ) -> None:
        """`serve_health`: the process's health server too, on a free loopback port
        (`health_port` once started)."""
        suffix = uuid.uuid4().hex[:8]
        self.serve_health = serve_health
        self.health_port: int | None = None
        self.settings = load_settings(
            BOOTSTRAP_SERVER=bootstrap_server,
            REQUEST_TOPIC=f"gpt-send-{suffix}",
            RESPONSE_TOPIC=f"gpt-response-{suffix}",
            DLQ_TOPIC=f"gpt-send-{suffix}.dlq",
            ERASE_TOPIC=f"gpt-erase-{suffix}",
            CONSUMER_GROUP=f"chater-gpt-{suffix}",
            SECRET_KEY="test-secret",
            REQUESTS_PER_MINUTE=0,
            **settings,
        )
        ensure_topics(
            self.settings.KAFKA,
            [self.settings.REQUEST_TOPIC, self.settings.RESPONSE_TOPIC, self.settings.DLQ_TOPIC],
        )
        self.runtime = WorkerRuntime(self.settings, customise, keep_usage_view=False)
        self.container = self.runtime.container
        self.worker = self.runtime.worker
        # Large enough for the hostile records tests send (the worker's own bound is a setting).
        self.producer = Producer(producer_config(self.settings.KAFKA, 32 * 1024 * 1024))
        self._readers: dict[str, Consumer] = {}
        self._seen: dict[str, list[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # Lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RunningWorker:
        started = threading.Event()

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                async with contextlib.AsyncExitStack() as stack:
                    if self.serve_health:
                        self.health_port = await stack.enter_async_context(
                            self.runtime.health_server(0, host="127.0.0.1")
                        )
                    started.set()
                    await self.worker.run(self._stop)

            try:
                asyncio.run(main())
            except BaseException as error:  # surfaced by stop() and wait helpers
                self.error = error
                started.set()

        self._thread = threading.Thread(target=run, name="chater-gpt-worker", daemon=True)
        self._thread.start()
        started.wait(timeout)
        if not self.worker.assigned.wait(timeout):
            raise RuntimeError(f"the worker was not assigned partitions in {timeout}s: {self.error}")
        return self

    def stop(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None  # it stopped on its own (its error is raised below)
        if self._thread and self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            self._thread = None
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self.producer.flush(5)
        del self.producer  # librdkafka clients stop when their last reference goes
        self.runtime.close()
        if self.error:
            raise self.error

    def __enter__(self) -> RunningWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Talking to it --------------------------------------------------------------

    def send(self, key: str | bytes | None, value: dict[str, Any] | bytes) -> None:
        body = json.dumps(value).encode() if isinstance(value, dict) else value
        raw_key = key.encode() if isinstance(key, str) else key
        self.producer.produce(self.settings.REQUEST_TOPIC, body, raw_key)
        self.producer.flush(10)

    def responses(self, count: int, timeout: float = 30.0) -> list[tuple[bytes | None, dict[str, Any]]]:
        """The first `count` responses in the order they were published."""
        return [
            (m[0], json.loads(m[1])) for m in self._read(self.settings.RESPONSE_TOPIC, count, timeout)
        ]

    def dead_letters(self, count: int, timeout: float = 30.0) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
        return self._read(self.settings.DLQ_TOPIC, count, timeout)

    def _read(self, topic: str, count: int, timeout: float) -> list[Any]:
        """Read a topic from its start, without a consumer group (no join delay)."""
        reader = self._readers.get(topic)
        if reader is None:
            reader = Consumer(reader_config(self.settings.KAFKA, f"reader-{uuid.uuid4().hex[:8]}"))
            reader.assign([TopicPartition(topic, 0, 0)])
            self._readers[topic] = reader
        seen = self._seen.setdefault(topic, [])
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            if self.error:
                raise self.error
            message = reader.poll(0.2)
            if message is None or message.error():
                continue
            seen.append((message.key(), message.value(), dict(message.headers() or [])))
        if len(seen) < count:
            raise TimeoutError(f"{len(seen)} of {count} records on {topic} within {timeout}s")
        if topic == self.settings.RESPONSE_TOPIC:
            return [(key, value) for key, value, _ in seen[:count]]
        return seen[:count]


class WorkerProcess:
    """One `chater-gpt worker` process; restartable with the same settings."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        # A port of its own, kept across restarts: several workers share the machine.
        self.health_port = int(env.get("HEALTH_PORT") or free_loopback_port())
        self.env = {**env, "HEALTH_PORT": str(self.health_port)}
        self.log_path = log_path
        self._log_start = 0
        self.process: subprocess.Popen[bytes] | None = None

    def readiness(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """GET /readyz: the status code and the JSON body."""
        return self._get("/readyz", timeout)

    def liveness(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """GET /healthz: the status code and the JSON body."""
        return self._get("/healthz", timeout)

    def _get(self, path: str, timeout: float) -> tuple[int, dict[str, Any]]:
        status, _, body = self.fetch(path, timeout)
        return status, json.loads(body)

    def fetch(self, path: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
        """GET a path of the health port: status, content type, body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            connection.close()

    def start(self) -> None:
        # The log is kept across restarts: only what this process writes counts.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the process keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", "worker"],
                env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        self._wait_for("assigned [")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_bytes()[self._log_start:].decode(errors="replace"):
                return
            if self.process and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker never logged {text!r}:\n{self.log()[-3000:]}")


def start_together(workers: list[WorkerProcess], timeout: float) -> None:
    """Start the workers at once (as replicas of a Deployment do); returns once
    each logged its first assignment, raises what any start raised."""
    errors: list[BaseException] = []

    def start(worker: WorkerProcess) -> None:
        try:
            worker.start()  # returns once the worker logged "assigned ["
        except BaseException as error:
            errors.append(error)

    starting = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join(timeout)
    assert not errors, errors
