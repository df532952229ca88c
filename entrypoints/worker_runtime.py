"""A worker process, assembled from Settings: the one place that does it, for
`chater-gpt worker`, the demo and the tests.

The container wires the adapters; the runtime adds what runs beside the Kafka
worker: its health server (with `/metrics`) and the usage view's catch-up
thread, and closes everything in order. Signals are the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from adapters.kafka import admin_config
from entrypoints.container import Container, build_container
from entrypoints.health import health_server, observe_worker
from entrypoints.settings import Settings
from entrypoints.startup import wait_for_broker
from entrypoints.usage_catch_up import UsageCatchUp
from entrypoints.worker import KafkaWorker


class WorkerRuntime:
    """The container, the worker and what runs beside it.

        with WorkerRuntime(settings) as runtime:   # starts the usage catch-up
            asyncio.run(runtime.run(stop))          # health server and worker

    `customise` may override the container's providers before the worker is
    built (tests); `keep_usage_view=False` leaves the usage view to whoever
    reads it (the demo, the tests).
    """

    def __init__(
        self,
        settings: Settings,
        customise: Callable[[Container], None] | None = None,
        keep_usage_view: bool = True,
    ) -> None:
        self.settings = settings
        self.container = build_container(settings)
        if customise is not None:
            customise(self.container)
        self.worker: KafkaWorker = self.container.worker()
        self._usage: UsageCatchUp | None = None
        if keep_usage_view:
            assert settings.SECRET_KEY is not None  # validated
            self._usage = UsageCatchUp(
                self.container.records(),
                settings.SECRET_KEY.get_secret_value(),
                self.container.model_names().label,
            )

    def __enter__(self) -> WorkerRuntime:
        if self._usage is not None:
            self._usage.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def run(self, stop: asyncio.Event) -> None:
        """The health server on HEALTH_HOST:HEALTH_PORT (port 0: none) and, once the
        broker answers (one line per failed attempt, until `stop`), the worker until
        `stop` is set; raises WorkerFailed if the worker stopped on an error."""
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            if settings.HEALTH_PORT:
                await stack.enter_async_context(
                    self.health_server(settings.HEALTH_PORT, settings.HEALTH_HOST)
                )
            if await wait_for_broker(admin_config(settings.KAFKA), stop):
                await self.worker.run(stop)

    @contextlib.asynccontextmanager
    async def health_server(self, port: int, host: str | None = None) -> AsyncIterator[int]:
        """`/healthz`, `/readyz` and `/metrics` on `port` (0: any free port) for the
        block; yields the port bound."""
        container = self.container
        metrics = container.metrics()
        observe_worker(
            metrics, self.worker, container.circuit_breaker(), container.chat_service().ledger,
            retries=container.language_model(), measured=container.measured_model(),
        )
        async with health_server(
            container.health(), port, metrics.prometheus_text, host=host
        ) as bound:
            yield bound

    def close(self) -> None:
        """After the worker stopped: the usage view's last catch-up (what the worker
        recorded last), the last metrics export, then the store."""
        if self._usage is not None:
            self._usage.stop()
        self.container.metrics().close()
        self.container.records().close()
