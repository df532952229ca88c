"""Times and prices every call to the model provider, whatever becomes of it."""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from application.ports import (
    LanguageModel,
    Metrics,
    ModelCall,
    ModelError,
    ModelReply,
    RateLimitStatus,
)
from domain.pricing import PriceTable


class MeasuredModel:
    """Counts what was spent where it was spent: at each call that got an answer,
    so a reply replayed from the store is never counted twice. Each call is a span
    (OpenTelemetry's gen_ai conventions), a child of the request's."""

    def __init__(
        self,
        model: LanguageModel,
        metrics: Metrics,
        prices: PriceTable,
        tracer: trace.Tracer | None = None,
        model_label: Callable[[str], str] = lambda model: model,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.prices = prices
        self.model_label = model_label
        self.tracer = tracer or trace.get_tracer(__name__)
        # The provider's headroom as its latest answer for each model (label) said it.
        self.headroom: dict[str, RateLimitStatus] = {}

    async def complete(self, call: ModelCall) -> ModelReply:
        with self.tracer.start_as_current_span(
            f"chat {self.model_label(call.model)}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": self.model_label(call.model),
                "gen_ai.request.max_tokens": call.max_tokens,
                "gen_ai.request.temperature": call.temperature,
            },
            record_exception=False,  # an exception's text may quote the request
            set_status_on_exception=False,
        ) as span:
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
                if outcome != "ok":
                    span.set_attribute("error.type", outcome)
                    span.set_status(Status(StatusCode.ERROR, outcome))
            if reply.rate_limits is not None:
                self.headroom[self.model_label(call.model)] = reply.rate_limits
            cost = self.prices.cost(
                reply.model, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens
            )
            self.metrics.model_used(
                model=reply.model,
                prompt_tokens=reply.prompt_tokens,
                cached_tokens=reply.cached_tokens,
                completion_tokens=reply.completion_tokens,
                cost=cost,
            )
            span.set_attributes({
                "gen_ai.response.model": self.model_label(reply.model),
                "gen_ai.response.finish_reasons": [reply.finish_reason],
                "gen_ai.usage.input_tokens": reply.prompt_tokens,
                "gen_ai.usage.output_tokens": reply.completion_tokens,
                "chater.cached_tokens": reply.cached_tokens,
            })
            if cost is not None:
                span.set_attribute("chater.cost_usd", cost)
            return reply

    async def close(self) -> None:
        await self.model.close()
