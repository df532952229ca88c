"""Times and prices every call to the model provider, whatever becomes of it."""

from __future__ import annotations

import time

from application.ports import LanguageModel, Metrics, ModelCall, ModelError, ModelReply
from domain.pricing import PriceTable


class MeasuredModel:
    """Counts what was spent where it was spent: at each call that got an answer,
    so a reply replayed from the store is never counted twice."""

    def __init__(self, model: LanguageModel, metrics: Metrics, prices: PriceTable) -> None:
        self.model = model
        self.metrics = metrics
        self.prices = prices

    async def complete(self, call: ModelCall) -> ModelReply:
        started = time.perf_counter()
        outcome = "ok"
        try:
            reply = await self.model.complete(call)
        except ModelError as error:
            outcome = error.error_type
            raise
        except BaseException:
            outcome = "interrupted"
            raise
        finally:
            self.metrics.model_called(
                model=call.model, outcome=outcome, seconds=time.perf_counter() - started
            )
        self.metrics.model_used(
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            cached_tokens=reply.cached_tokens,
            completion_tokens=reply.completion_tokens,
            cost=self.prices.cost(
                reply.model, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens
            ),
        )
        return reply

    async def close(self) -> None:
        await self.model.close()
