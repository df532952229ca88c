"""Retries and a fallback model around any LanguageModel: the one retry loop there is.

Waits as long as the provider asks (Retry-After and rate-limit reset headers,
read by the adapter into ModelError.retry_after), otherwise backs off
exponentially with full jitter. The fallback model (if any) is asked at once
when the primary's circuit holds calls back (`holds_back`: open, its probe not
due; a call when it is due goes to the primary as its probe), when the
primary's circuit opens during the retries, when the retries run out,
or when the failure is an upstream one that retrying cannot fix; the fallback
has its own circuit, and the reply's `model` says which model answered. While
both circuits hold calls back the call waits at the primary's. An account-wide refusal
(an exhausted quota, say) never reaches this class: the circuit breaker pauses
every model for it, so no fallback is tried against the same account.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

from application.ports import LanguageModel, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

# Errors a different model may well not have; a bad request stays bad on any model.
FALLBACK_ON = {"upstream_error", "rate_limited"}


class RetryingModel:
    def __init__(
        self,
        model: LanguageModel,
        max_retries: int = 3,
        fallback_model: str | None = None,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pace: Callable[[ModelCall], Awaitable[None]] | None = None,
        holds_back: Callable[[str], bool] | None = None,
    ) -> None:
        self.model = model
        self.max_retries = max_retries
        self.fallback_model = fallback_model or None
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        # Awaited with the call before each call this class adds (retries, the
        # fallback), so that they count against REQUESTS_PER_MINUTE and
        # TOKENS_PER_MINUTE like the first call, which the use case paces itself.
        self.pace = pace
        # Whether a model's circuit would hold a call back now (the circuit breaker's).
        self.holds_back = holds_back or (lambda model: False)
        # Since start, for the metrics: retries by (model, error type), and calls the
        # fallback answered instead by (model, fallback, why: an error type or circuit_open).
        self.retries: Counter[tuple[str, str]] = Counter()
        self.fallbacks: Counter[tuple[str, str, str]] = Counter()

    async def complete(self, call: ModelCall) -> ModelReply:
        if self.fallback_model is None or self.fallback_model == call.model:
            return await self._with_retries(call)
        fallback = replace(call, model=self.fallback_model)
        if self.holds_back(call.model) and not self.holds_back(fallback.model):
            # The primary would hold it back: the fallback answers now (this is the
            # first call, paced by the caller).
            log.debug("%s: circuit open; asking %s", call.model, fallback.model)
            self.fallbacks[(call.model, fallback.model, "circuit_open")] += 1
            return await self._with_retries(fallback)
        try:
            return await self._with_retries(call, until_open=True)
        except ModelError as error:
            if error.error_type not in FALLBACK_ON:
                raise
            log.warning("%s failed (%s); asking %s", call.model, error.error_type, self.fallback_model)
            self.fallbacks[(call.model, fallback.model, error.error_type)] += 1
            try:
                return await self._with_retries(fallback, paced=False)
            except ModelError as fallback_error:
                log.warning("fallback %s failed too: %s", self.fallback_model, fallback_error)
                raise error from None

    async def _with_retries(
        self, call: ModelCall, paced: bool = True, until_open: bool = False
    ) -> ModelReply:
        """`until_open`: give up as soon as the model's circuit opens (a fallback
        answers then, rather than a retry waiting at the circuit)."""
        attempt = 0
        while True:
            if not paced:
                if self.pace is not None:
                    await self.pace(call)
                await call.progress.going_again()  # a retry, or the fallback
            try:
                return await self.model.complete(call)
            except ModelError as error:
                if not error.retryable or attempt >= self.max_retries:
                    raise
                if until_open and self.holds_back(call.model):
                    raise
                delay = self.delay(attempt, error)
                attempt += 1
                self.retries[(call.model, error.error_type)] += 1
                log.info("%s: %s; retry %d in %.2fs", call.model, error.error_type, attempt, delay)
                await self.sleep(delay)
                if until_open and self.holds_back(call.model):
                    # It opened while this call waited: the fallback answers now, and
                    # takes the rate limiter's token for itself (none taken here).
                    raise
                paced = False  # the retry takes its own token, at the top

    def delay(self, attempt: int, error: ModelError) -> float:
        """The provider's word if it gave one, else exponential backoff with full jitter."""
        if error.retry_after is not None and math.isfinite(error.retry_after):
            return min(max(error.retry_after, 0.0), self.max_delay)
        return random.uniform(0, min(self.base_delay * 2**attempt, self.max_delay))

    async def close(self) -> None:
        await self.model.close()
