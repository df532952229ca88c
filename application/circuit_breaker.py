"""A circuit breaker per model: stop hammering a model that is down.

After `failure_threshold` retryable upstream failures in a row the circuit of
that model opens: calls wait instead of failing, one probe goes through every
`probe_interval`, and the first success closes the circuit and lets everyone
through. Waiting callers stay in flight, so the worker's MAX_IN_FLIGHT
backpressure pauses consumption: nothing is failed and nothing unanswered is
committed meanwhile (a request's deadline still ends its wait). Errors about
one request (a bad request, a context too long) do not count.

The provider as a whole can refuse the account (ModelError.pause: an exhausted
quota, a key it refuses even after a re-read, a 403 for the organisation or
project). That is no one call's fault and waiting is what fixes it, so the
breaker pauses the provider, every model at once: the call that met it and
every call after it wait as at an open circuit, one probe per `probe_interval`
goes out, one ERROR line says why (and `paused()` tells the health report and
the metrics), and the first probe the provider answers otherwise resumes all.
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
        # The provider's pause: a gate every call passes first, whatever its model.
        self._provider = _Circuit()
        self.pause_reason: str | None = None
        self.paused_count = 0
        self._paused_since = 0.0

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

    def holds_back(self, model: str) -> bool:
        """Whether a call to `model` would wait at its circuit now: open, and its
        probe running or not due yet (a call when it is due goes as the probe)."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.opened_at is None:
            return False
        return circuit.probing or self.monotonic() < circuit.opened_at + self.probe_interval

    def paused(self) -> str | None:
        """Why the provider refuses the account (every call waits), or None."""
        return self.pause_reason

    def paused_waiting(self) -> int:
        """Calls held back now by the provider's pause."""
        return self._provider.waiting if self._provider.opened_at is not None else 0

    async def complete(self, call: ModelCall) -> ModelReply:
        circuit = self._circuits.setdefault(call.model, _Circuit())
        while True:
            held = self._provider.opened_at is not None or circuit.opened_at is not None
            provider_probe = await self._admit(self._provider, call)
            probe = False if provider_probe else await self._admit(circuit, call)
            try:
                if held:  # it goes later than it was meant to
                    await call.progress.going_again()
                reply = await self.model.complete(call)
            except ModelError as error:
                if error.pause is not None:  # refused, not billed: wait with the others
                    self._release(circuit, probe)
                    self._pause(error.pause, provider_probe)
                    call.progress.sent = False
                    continue
                if provider_probe:
                    self._probed(error)
                self._failed(call.model, circuit, error, probe)
                raise
            except BaseException:
                # Cancelled or broken: let another probe go.
                self._release(self._provider, provider_probe)
                self._release(circuit, probe)
                raise
            if provider_probe:
                self._resume()
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

    @staticmethod
    def _release(circuit: _Circuit, probe: bool) -> None:
        """A probe that decided nothing: the next one may go."""
        if probe:
            circuit.probing = False
            circuit.notify()

    def _pause(self, reason: str, probe: bool) -> None:
        gate = self._provider
        if gate.opened_at is None:
            self.paused_count += 1
            self._paused_since = self.monotonic()
            log.error(
                "the model provider refuses this account (%s): every call waits, one probe "
                "every %gs; nothing is failed before its deadline", reason, self.probe_interval,
            )
        elif reason != self.pause_reason:
            log.error("the model provider still refuses this account, now: %s", reason)
        self.pause_reason = reason
        if probe or gate.opened_at is None:  # the next probe one interval from now
            gate.opened_at = self.monotonic()
        if probe:  # another call's refusal (sent before) leaves the running probe alone
            gate.probing = False
        gate.notify()

    def _probed(self, error: ModelError) -> None:
        """The pause's probe got another error: an answer about the call itself (a
        bad request, a rate limit) shows the account works again; an outage says
        nothing about it, and the pause goes on: the next probe one interval from
        now, not every waiting call at once."""
        if error.retryable and error.error_type != "rate_limited":
            gate = self._provider
            if gate.opened_at is not None:
                gate.opened_at = self.monotonic()
            self._release(gate, True)
        else:
            self._resume()

    def _resume(self) -> None:
        gate = self._provider
        if gate.opened_at is None:
            return
        log.warning(
            "the model provider accepts this account again after %.0fs (%s): calls resume",
            self.monotonic() - self._paused_since, self.pause_reason,
        )
        self.pause_reason = None
        gate.opened_at = None
        gate.probing = False
        gate.notify()

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
