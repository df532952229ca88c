"""A circuit breaker per model: stop hammering a model that is down.

After `failure_threshold` retryable upstream failures in a row the circuit of
that model opens: calls wait instead of failing, one probe goes through every
`probe_interval`, and the first success closes the circuit and lets everyone
through. Waiting callers stay in flight, so the worker's MAX_IN_FLIGHT
backpressure pauses consumption: nothing is failed and nothing unanswered is
committed meanwhile (a request's deadline still ends its wait). Permanent
errors (a bad key, an exhausted quota, a bad request) do not count: waiting
would not fix them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from application.ports import LanguageModel, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

PROVIDER_FAILURES = {"upstream_error", "rate_limited"}


class _Circuit:
    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.waiting = 0  # calls held back while the circuit is open
        self.changed = asyncio.Event()  # replaced after each change; waiters wake on it

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


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
        self._circuits: dict[str, _Circuit] = {}
        self.opened_count = 0

    def state(self, model: str) -> str:
        circuit = self._circuits.get(model)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        return "half-open" if circuit.probing else "open"

    def states(self) -> dict[str, str]:
        """The state of every model's circuit that has been used."""
        # A copy first: an exporter's thread may read while the loop adds a circuit.
        return {model: self.state(model) for model in list(self._circuits)}

    def waiting(self) -> dict[str, int]:
        """Calls held back now, per model whose circuit is not closed."""
        return {
            model: circuit.waiting
            for model, circuit in list(self._circuits.items())
            if circuit.opened_at is not None
        }

    async def complete(self, call: ModelCall) -> ModelReply:
        circuit = self._circuits.setdefault(call.model, _Circuit())
        probe = await self._admit(circuit, call)
        try:
            reply = await self.model.complete(call)
        except ModelError as error:
            self._failed(call.model, circuit, error, probe)
            raise
        except BaseException:
            if probe:  # cancelled or broken: let another probe go
                circuit.probing = False
                circuit.notify()
            raise
        self._succeeded(call.model, circuit, probe)
        return reply

    async def _admit(self, circuit: _Circuit, call: ModelCall) -> bool:
        """Wait until a call may go through; True when it goes as the probe."""
        if circuit.opened_at is None:
            return False
        # Left unsent if the wait is cancelled: the use case then knows that this
        # call never reached the provider and costs nothing.
        call.progress.sent = False
        circuit.waiting += 1
        try:
            while circuit.opened_at is not None:
                wait = circuit.opened_at + self.probe_interval - self.monotonic()
                if wait <= 0 and not circuit.probing:
                    circuit.probing = True
                    call.progress.sent = True
                    return True
                changed = circuit.changed
                try:
                    # Until the next probe is due, or (a probe running) until it ends.
                    async with asyncio.timeout(wait if wait > 0 else None):
                        await changed.wait()
                except TimeoutError:
                    pass
            call.progress.sent = True
            return False
        finally:
            circuit.waiting -= 1

    def _failed(self, model: str, circuit: _Circuit, error: ModelError, probe: bool) -> None:
        if error.error_type not in PROVIDER_FAILURES or not error.retryable:
            if probe:
                circuit.probing = False
                circuit.notify()
            return
        circuit.failures += 1
        if probe or (circuit.opened_at is None and circuit.failures >= self.failure_threshold):
            if circuit.opened_at is None:
                self.opened_count += 1
                log.warning("%s failing (%d in a row): circuit open", model, circuit.failures)
            circuit.opened_at = self.monotonic()
            circuit.probing = False
            circuit.notify()

    def _succeeded(self, model: str, circuit: _Circuit, probe: bool) -> None:
        if circuit.opened_at is not None and not probe and circuit.probing:
            return  # an answer from before the outage: the probe decides
        if circuit.opened_at is not None:
            log.warning("%s answered again: circuit closed", model)
        circuit.failures = 0
        circuit.opened_at = None
        circuit.probing = False
        circuit.notify()

    async def close(self) -> None:
        await self.model.close()
