"""A circuit breaker in front of the model: stop hammering a provider that is down.

After `failure_threshold` upstream failures in a row the circuit opens: calls
wait instead of failing, one probe goes through every `probe_interval`, and the
first success closes the circuit and lets everyone through. Waiting callers
stay in flight, so the worker's MAX_IN_FLIGHT backpressure pauses consumption:
nothing is failed and nothing unanswered is committed meanwhile (a request's
deadline still ends its wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from application.ports import LanguageModel, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

# Failures that say the provider is unwell; a bad request says nothing about it.
PROVIDER_FAILURES = {"upstream_error", "rate_limited"}


class CircuitBreaker:
    def __init__(
        self,
        model: LanguageModel,
        failure_threshold: int = 5,
        probe_interval: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self.monotonic = monotonic
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._closed = asyncio.Event()
        self._closed.set()
        self.opened_count = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._probing else "open"

    async def complete(self, call: ModelCall) -> ModelReply:
        probe = await self._admit()
        try:
            reply = await self.model.complete(call)
        except ModelError as error:
            self._failed(error, probe)
            raise
        except BaseException:
            if probe:
                self._probing = False  # cancelled or broken: let another probe go
            raise
        self._succeeded()
        return reply

    async def _admit(self) -> bool:
        """Wait until a call may go through; True when it goes as the probe."""
        while self.opened_at is not None:
            wait = self.opened_at + self.probe_interval - self.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                return True
            try:
                await asyncio.wait_for(self._closed.wait(), max(wait, 0.05))
            except TimeoutError:
                pass
        return False

    def _failed(self, error: ModelError, probe: bool) -> None:
        if error.error_type not in PROVIDER_FAILURES:
            if probe:
                self._probing = False
            return
        self.failures += 1
        if probe or (self.opened_at is None and self.failures >= self.failure_threshold):
            if self.opened_at is None:
                self.opened_count += 1
                log.warning("model provider failing (%d in a row): circuit open", self.failures)
            self.opened_at = self.monotonic()
            self._probing = False
            self._closed.clear()

    def _succeeded(self) -> None:
        if self.opened_at is not None:
            log.warning("model provider answered again: circuit closed")
        self.failures = 0
        self.opened_at = None
        self._probing = False
        self._closed.set()

    async def close(self) -> None:
        await self.model.close()
