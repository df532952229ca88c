"""BatchModel port on the official openai SDK: OpenAI's Batch API (files and batches)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import openai
from openai import AsyncOpenAI

from adapters.openai_model import ApiKeySource, chat_body, reply_from_completion, translate
from adapters.secret_file import StaticSecret
from application.ports import BatchState, ModelCall, ModelError, ModelReply

log = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT = "/v1/chat/completions"
#: The provider's statuses of a batch that will not change any more.
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})

# The SDK's own mapping of an HTTP status to its error class, for the failed lines of
# a batch: `translate` then maps them exactly as it maps a live call's errors.
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}

# Line-level errors of requests the batch never ran (OpenAI's error file).
_NOT_RUN = {
    "batch_expired": "The batch expired before this request was answered.",
    "batch_cancelled": "The batch was cancelled before this request was answered.",
}

_URL = re.compile(r"\b\w+://\S+")
_IDENTIFIER = re.compile(r"\b(?:sk|org|proj|key|user)-[\w*-]+")


class OpenAIBatch:
    """Sends calls as one batch (a JSONL file of Chat Completions requests) and reads
    its outcome once the provider has ended it; every failure becomes a ModelError
    safe to show a user.

    Nothing is kept in memory between `submit` and `poll`: the custom ids of a
    batch are read back from its input file, so any process can poll any batch.
    Batch calls are few and not latency-critical, so the SDK's own retries (with
    its backoff) are used. The API key is asked of its source before each request;
    a 401 makes the source read the key again, and the request is sent once more
    only if the key is now another one (as `OpenAIModel` does).
    """

    def __init__(
        self,
        api_key: str | ApiKeySource,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        self.key_source = StaticSecret(api_key) if isinstance(api_key, str) else api_key
        self.client = AsyncOpenAI(
            api_key=self.key_source.current(),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def submit(self, entries: list[tuple[str, ModelCall]]) -> str:
        if not entries:
            raise ModelError("invalid_request", "A batch needs at least one call.")
        model = entries[0][1].model
        content = "".join(
            json.dumps(
                {
                    "custom_id": custom_id,
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": chat_body(call),
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
            for custom_id, call in entries
        ).encode()
        name = f"chat-batch-{uuid.uuid4().hex}.jsonl"
        try:
            uploaded = await self._send(
                lambda: self.client.files.create(file=(name, content), purpose="batch")
            )
        except openai.OpenAIError as error:
            raise translate(error, model) from None
        try:
            batch = await self._send(
                lambda: self.client.batches.create(
                    input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
                )
            )
        except openai.OpenAIError as error:
            await self._forget_file(uploaded.id)
            raise translate(error, model) from None
        return batch.id

    async def poll(self, batch_id: str) -> BatchState:
        try:
            batch = await self._send(lambda: self.client.batches.retrieve(batch_id))
            if batch.status not in ENDED:
                return BatchState(batch_id, batch.status)
            models = _requested(await self._download(batch.input_file_id))
            lines: list[dict[str, Any]] = []
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    lines.extend(_jsonl(await self._download(file_id)))
        except openai.NotFoundError:
            raise ModelError(
                "invalid_request",
                "The batch or its files are not available from the model provider.",
            ) from None
        except openai.OpenAIError as error:
            raise translate(error, "") from None

        answers: dict[str, ModelReply | ModelError] = {}
        for line in lines:
            custom_id = line.get("custom_id")
            if isinstance(custom_id, str) and custom_id in models and custom_id not in answers:
                answers[custom_id] = self._outcome(line, models[custom_id])
        results: dict[str, ModelReply | ModelError] = {}
        for custom_id in models:
            if custom_id in answers:
                results[custom_id] = answers[custom_id]
            elif batch.status == "failed":
                results[custom_id] = _refused(batch)
            else:
                results[custom_id] = ModelError(
                    "upstream_error",
                    f"The batch ended ({batch.status}) without an answer to this request.",
                    True,
                )
        return BatchState(batch_id, batch.status, results)

    async def close(self) -> None:
        await self.client.close()

    async def _send(self, request: Callable[[], Awaitable[T]]) -> T:
        """One SDK request with the key of the moment; once more if a 401 came from an old key."""
        key = self.key_source.current()
        self.client.api_key = key
        try:
            return await request()
        except openai.AuthenticationError:
            if self.key_source.current() == key:
                self.key_source.reread()
            if self.key_source.current() == key:
                raise  # the same key again would be refused again
        # Not retried inside the except block, so a second failure carries no trace of the first.
        log.warning(
            "the model provider refused the API key; sending the request again with the new key"
        )
        self.client.api_key = self.key_source.current()
        return await request()

    async def _download(self, file_id: str) -> bytes:
        response = await self._send(lambda: self.client.files.content(file_id))
        return response.content

    async def _forget_file(self, file_id: str) -> None:
        """Delete an uploaded input file no batch uses; a failure only leaves it behind."""
        try:
            await self._send(lambda: self.client.files.delete(file_id))
        except openai.OpenAIError:
            log.warning("could not delete a batch input file after the batch was refused")

    def _outcome(self, line: dict[str, Any], model: str) -> ModelReply | ModelError:
        """What one line of the output or error file says of its request."""
        response = line.get("response")
        try:
            if isinstance(response, dict) and response.get("status_code") is not None:
                status = int(response["status_code"])
                body = response.get("body")
                if status == 200:
                    return reply_from_completion(body, model)
                return self._line_error(status, body, model)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            log.warning("unreadable line in a batch's output from the model provider")
            return ModelError(
                "upstream_error", "The model provider sent an unreadable answer.", True
            )
        error = line.get("error")
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
        if code in _NOT_RUN:
            return ModelError("upstream_error", _NOT_RUN[code], True)
        return ModelError(
            "upstream_error", "The model provider could not answer this request.", True
        )

    def _line_error(self, status: int, body: Any, model: str) -> ModelError:
        """A failed line mapped as `translate` maps the same HTTP error of a live call."""
        error_class = _STATUS_ERRORS.get(
            status, openai.InternalServerError if status >= 500 else openai.APIStatusError
        )
        data = body.get("error", body) if isinstance(body, dict) else body
        response = httpx2.Response(status, request=httpx2.Request("POST", self.client.base_url))
        return translate(
            error_class("a request of the batch failed", response=response, body=data), model
        )


def _jsonl(content: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a line that is not one is skipped."""
    lines = []
    unreadable = 0
    for raw in content.decode("utf-8", errors="replace").splitlines():
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            item = None
        if isinstance(item, dict):
            lines.append(item)
        else:
            unreadable += 1
    if unreadable:
        log.warning("%d unreadable lines in a batch file from the model provider", unreadable)
    return lines


def _requested(content: bytes) -> dict[str, str]:
    """The custom ids of a batch's input file, in order, with the model each asks for."""
    models: dict[str, str] = {}
    for line in _jsonl(content):
        custom_id, body = line.get("custom_id"), line.get("body")
        if isinstance(custom_id, str) and custom_id not in models:
            model = body.get("model") if isinstance(body, dict) else None
            models[custom_id] = model if isinstance(model, str) else ""
    return models


def _refused(batch: Any) -> ModelError:
    """The error of every request of a batch the provider failed as a whole."""
    errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
    first = errors[0] if errors else None
    code = (first.code or "") if first is not None else ""
    reason = _safe_text(first.message or "") if first is not None else ""
    if first is not None and first.line is not None:
        reason = f"{reason} (line {first.line})".strip()
    message = f"The model provider refused the batch: {reason or code or 'no reason given'}"
    if code == "token_limit_exceeded":
        return ModelError("rate_limited", message, True)
    return ModelError("upstream_error", message)


def _safe_text(text: str, limit: int = 300) -> str:
    """A provider's message fit to show a user: no URLs, keys or account ids, one short line."""
    text = _URL.sub("<url>", text)
    text = _IDENTIFIER.sub("<id>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
