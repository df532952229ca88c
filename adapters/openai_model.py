"""LanguageModel port on the official openai SDK (async client, any compatible base URL)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from adapters.secret_file import StaticSecret
from application.ports import ChatMessage, ModelCall, ModelError, ModelReply, RateLimitStatus
from domain.model_families import family_of, served_model

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


def chat_body(call: ModelCall) -> dict[str, Any]:
    """The Chat Completions request body for a call (live, or a line of a batch): the
    model OpenAI serves for its name, and the parameters its family takes
    (domain.model_families)."""
    return {
        "model": served_model(call.model),
        "messages": [to_openai_message(m) for m in call.messages],
        **family_of(call.model).parameters(call.max_tokens, call.temperature),
    }


def reply_from_completion(completion: dict[str, Any], model: str) -> ModelReply:
    """A `chat.completion` object as a reply (`model`: the one asked, if it names none).
    Raises KeyError, IndexError, TypeError... on a body that is not one."""
    choice = completion["choices"][0]
    usage = completion.get("usage") or {}
    return ModelReply(
        text=choice["message"].get("content") or "",
        model=completion.get("model") or model,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        finish_reason=choice.get("finish_reason") or "stop",
    )


class ApiKeySource(Protocol):
    """Where the API key comes from (adapters.secret_file: a variable, or a file re-read on change)."""

    def current(self) -> str:
        """The key to send now; cheap enough to ask before every call."""
        ...

    def reread(self) -> bool:
        """Read the key's source again now; True if the key changed."""
        ...


class OpenAIModel:
    """Calls Chat Completions; every failure becomes a ModelError safe to show a user.

    Thousands of calls are in flight at once, so two choices keep the client from
    being the bottleneck (measured with tests/load/load_test.py): aiohttp as the
    SDK's transport with a keep-alive pool as large as the concurrency, and the
    client's `post` with a ready-made body and the raw response, which skips the
    SDK's per-call transformation of typed parameters and response models (about
    half of its CPU per call). Retries, timeouts, auth and error mapping remain
    the SDK's.

    The API key may be rotated while we run (a mounted Secret file): the key
    source is asked before every call, and the SDK reads `client.api_key` when
    it builds each request's headers. A 401 makes the source read the key
    again, and the call is sent once more only if the key is now another one.
    """

    def __init__(
        self,
        api_key: str | ApiKeySource,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 0,
        max_connections: int = 1000,
    ) -> None:
        self.key_source = StaticSecret(api_key) if isinstance(api_key, str) else api_key
        self.timeout = timeout
        limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.client = AsyncOpenAI(
            api_key=self.key_source.current(),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=DefaultAioHttpClient(limits=limits, timeout=timeout),
        )

    async def complete(self, call: ModelCall) -> ModelReply:
        body = chat_body(call)
        try:
            # The SDK's timeout bounds each phase (a pooled connection, connecting,
            # each read); this bounds the whole attempt, as those waiting for it
            # (another replica, after a rebalance) count on.
            async with asyncio.timeout(self.timeout):
                response = await self._post(body)
            reply = reply_from_completion(json.loads(response.content), call.model)
            return replace(reply, rate_limits=rate_limit_status(response.headers))
        except openai.OpenAIError as error:
            raise translate(error, call.model) from None
        except TimeoutError:
            raise ModelError("upstream_error", "The model did not answer in time.", True) from None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            log.warning("unreadable completion from the model provider")
            raise ModelError(
                "upstream_error", "The model provider sent an unreadable answer.", True
            ) from None

    async def _post(self, body: dict[str, Any]) -> httpx2.Response:
        # The SDK builds this request's Authorization header from client.api_key;
        # a call running meanwhile can only have set a key read later than `key`.
        key = self.key_source.current()
        self.client.api_key = key
        try:
            return await self.client.post("/chat/completions", cast_to=httpx2.Response, body=body)
        except openai.AuthenticationError:
            if not self._key_changed_since(key):
                raise  # the same key again would be refused again: the usual error
        # Not retried inside the except block, so a second failure carries no trace of the first.
        log.warning("the model provider refused the API key; sending the call again with the new key")
        self.client.api_key = self.key_source.current()
        return await self.client.post("/chat/completions", cast_to=httpx2.Response, body=body)

    def _key_changed_since(self, refused: str) -> bool:
        """Read the key again (unless another call already did); whether it is another one now."""
        if self.key_source.current() == refused:
            self.key_source.reread()
        return self.key_source.current() != refused

    async def close(self) -> None:
        await self.client.close()


def rate_limit_status(headers: Any) -> RateLimitStatus | None:
    """The x-ratelimit-* headers of a response, if the provider sent any."""

    def number(name: str) -> int | None:
        try:
            return int(headers[name]) if headers.get(name) else None
        except (TypeError, ValueError):
            return None

    resets = []
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        try:
            if headers.get(name):
                resets.append(_duration(headers[name]))
        except ValueError:
            pass
    status = RateLimitStatus(
        remaining_requests=number("x-ratelimit-remaining-requests"),
        limit_requests=number("x-ratelimit-limit-requests"),
        remaining_tokens=number("x-ratelimit-remaining-tokens"),
        limit_tokens=number("x-ratelimit-limit-tokens"),
        reset_seconds=max(resets) if resets else None,
    )
    # Remaining figures alone still tell the metrics the headroom; pacing needs limits too.
    known = (status.remaining_requests, status.limit_requests, status.remaining_tokens,
             status.limit_tokens, status.reset_seconds)
    return status if any(figure is not None for figure in known) else None


def retry_after(headers: Any, rate_limited: bool = True) -> float | None:
    """Seconds to wait, from retry-after-ms, retry-after or (on a 429) the reset headers."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            value = headers["retry-after"]
            try:
                seconds = float(value)
                return seconds if math.isfinite(seconds) else None
            except ValueError:
                moment = email.utils.parsedate_to_datetime(value)
                if moment.tzinfo is None:  # "-0000": UTC by RFC 5322
                    moment = moment.replace(tzinfo=UTC)
                return max((moment - datetime.now(UTC)).total_seconds(), 0.0)
        resets = [
            _duration(headers[name])
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
            if rate_limited and headers.get(name)
        ]
        return max(resets) if resets else None
    except (TypeError, ValueError, OverflowError):
        return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _duration(text: str) -> float:
    """OpenAI's reset durations: '1s', '6m0s', '20ms', '1h2m3.5s'."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts:
        return float(text)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


# OpenAI's 403 for the place the calls come from: every call of the account is refused.
_ACCOUNT_REFUSED_CODES = {"unsupported_country_region_territory"}
_ACCOUNT_WORDS = re.compile(r"\b(organi[sz]ation|project)s?\b", re.IGNORECASE)
_MODEL_WORD = re.compile(r"\bmodels?\b", re.IGNORECASE)


def _message_of(error: openai.OpenAIError) -> str:
    """The provider's own message: the `message` of its error body (not the SDK's
    text, which quotes the whole body)."""
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else ""


def _refuses_the_account(error: openai.OpenAIError, code: str) -> bool:
    """Whether a 403 refuses the account as a whole: OpenAI's code for an unsupported
    country, region or territory, or a message about the organisation or project
    that names no model ("Your organization must be verified to use the model ..."
    is about that model). Anything else (a 403 with no OpenAI error body, from a
    gateway in front of the API, say) is the one request's error: pausing every
    model for it would let one request pause the service again and again."""
    if code in _ACCOUNT_REFUSED_CODES:
        return True
    message = _message_of(error)
    return bool(_ACCOUNT_WORDS.search(message)) and not _MODEL_WORD.search(message)


def translate(error: openai.OpenAIError, model: str) -> ModelError:
    """Map an SDK error to the contract's error types, without leaking internals."""
    mapped = _translate(error, model)
    response = getattr(error, "response", None)
    mapped.retry_after = retry_after(
        getattr(response, "headers", None), rate_limited=mapped.error_type == "rate_limited"
    )
    return mapped


def _translate(error: openai.OpenAIError, model: str) -> ModelError:
    code = str(getattr(error, "code", "") or "")
    if isinstance(error, openai.RateLimitError):
        if code == "insufficient_quota":  # the account's, not this call's
            return ModelError(
                "upstream_error", "The model provider's quota is exhausted.",
                pause="insufficient_quota",
            )
        return ModelError(
            "rate_limited", "The model provider is rate limiting requests; try later.", True
        )
    if isinstance(error, openai.APITimeoutError):
        return ModelError("upstream_error", "The model did not answer in time.", True)
    if isinstance(error, openai.APIConnectionError):
        return ModelError("upstream_error", "The model provider could not be reached.", True)
    # A refused key (once a re-read did not cure it) refuses every call of the account alike.
    if isinstance(error, openai.AuthenticationError):
        return ModelError(
            "upstream_error", "The service is not allowed to use the model provider.",
            pause="api_key_refused",
        )
    if isinstance(error, openai.PermissionDeniedError):
        if _refuses_the_account(error, code):
            return ModelError(
                "upstream_error", "The service is not allowed to use the model provider.",
                pause="permission_denied",
            )
        if code == "model_not_found" or _MODEL_WORD.search(_message_of(error)):
            # This model only (a project's allowed models, one that needs a verified organisation).
            return ModelError("invalid_request", f"The model '{model}' is not available.")
        # About this request only (a gateway or firewall in front of OPENAI_BASE_URL, say):
        # its own error, which pauses nothing and is not retried.
        return ModelError("upstream_error", "The model provider refused the request (HTTP 403).")
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
