"""LanguageModel port on the official openai SDK (async client, any compatible base URL)."""

from __future__ import annotations

import logging
from typing import Any

import openai
from openai import AsyncOpenAI

from application.ports import ChatMessage, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = []
    if message.text:
        parts.append({"type": "text", "text": message.text})
    parts.extend(
        {"type": "image_url", "image_url": {"url": image.data_url}} for image in message.images
    )
    return {"role": message.role, "content": parts}


class OpenAIModel:
    """Calls Chat Completions; every failure becomes a ModelError safe to show a user."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
    ) -> None:
        self.client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def complete(self, call: ModelCall) -> ModelReply:
        try:
            completion = await self.client.chat.completions.create(
                model=call.model,
                messages=[to_openai_message(m) for m in call.messages],  # type: ignore[misc]
                max_tokens=call.max_tokens,
                temperature=call.temperature,
            )
        except openai.OpenAIError as error:
            raise translate(error, call.model) from None
        except ValueError:
            # The SDK lets a 200 whose body is not JSON escape as a JSONDecodeError.
            log.warning("non-JSON completion from the model provider")
            raise ModelError(
                "upstream_error", "The model provider sent an unreadable answer.", True
            ) from None
        try:
            choice = completion.choices[0]
            usage = completion.usage
            return ModelReply(
                text=choice.message.content or "",
                model=completion.model or call.model,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                finish_reason=choice.finish_reason or "stop",
            )
        except (AttributeError, IndexError, TypeError):
            log.warning("malformed completion from the model provider")
            raise ModelError(
                "upstream_error", "The model provider sent an unreadable answer.", True
            ) from None

    async def close(self) -> None:
        await self.client.close()


def translate(error: openai.OpenAIError, model: str) -> ModelError:
    """Map an SDK error to the contract's error types, without leaking internals."""
    code = str(getattr(error, "code", "") or "")
    if isinstance(error, openai.RateLimitError):
        if code == "insufficient_quota":
            return ModelError("upstream_error", "The model provider's quota is exhausted.")
        return ModelError(
            "rate_limited", "The model provider is rate limiting requests; try later.", True
        )
    if isinstance(error, openai.APITimeoutError):
        return ModelError("upstream_error", "The model did not answer in time.", True)
    if isinstance(error, openai.APIConnectionError):
        return ModelError("upstream_error", "The model provider could not be reached.", True)
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ModelError(
            "upstream_error", "The service is not allowed to use the model provider."
        )
    if isinstance(error, openai.NotFoundError):
        return ModelError("invalid_request", f"The model '{model}' is not available.")
    if isinstance(error, openai.BadRequestError):
        if code == "context_length_exceeded":
            return ModelError(
                "context_too_long", "The message and its context are too long for the model."
            )
        if code in {"content_filter", "content_policy_violation"}:
            return ModelError("content_filter", "The request was refused by the content filter.")
        return ModelError("invalid_request", "The model provider rejected the request.")
    if isinstance(error, openai.APIStatusError):
        return ModelError(
            "upstream_error",
            f"The model provider failed (HTTP {error.status_code}).",
            error.status_code >= 500,
        )
    return ModelError("upstream_error", "The model provider sent an unreadable answer.", True)
