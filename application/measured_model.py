"""Times every call to the model provider, whatever becomes of it."""

from __future__ import annotations

import time

from application.ports import LanguageModel, Metrics, ModelCall, ModelError, ModelReply


class MeasuredModel:
    def __init__(self, model: LanguageModel, metrics: Metrics) -> None:
        self.model = model
        self.metrics = metrics

    async def complete(self, call: ModelCall) -> ModelReply:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self.model.complete(call)
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

    async def close(self) -> None:
        await self.model.close()
