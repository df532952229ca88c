"""The message contract with Chater producers: requests in, responses out.

`RequestBody` and `ResponseBody` are the contract as pydantic models: the parser
validates every record's value with `RequestBody`, and every response the worker
writes fits `ResponseBody` (a test holds it to that). The JSON Schemas and the
AsyncAPI document in `docs/contract/` are generated from them
(`python -m entrypoints.contract_docs`), and a test checks that they are current.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from application.images import Image, InvalidImage, decode_image
from domain.addresses import InvalidAddress, normalise_email
from domain.conversation import Failure, Outcome, Shredded

# An address's shape, not its deliverability: local@domain.tld, no spaces, at most 254.
EMAIL_SHAPE = re.compile(r"^(?=.{3,254}$)[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidRequest(ValueError):
    """A record that is not a valid chat request; the message is safe to show."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class ChatRequest:
    request_id: str
    user_email: str
    message: str
    context: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    images: tuple[Image, ...] = ()
    conversation_id: str | None = None
    priority: int = 0
    # Answer through the provider's Batch API: later (within a day), at half the price.
    batch: bool = False
    # When the answer stops being worth waiting for (epoch seconds), if known.
    deadline: float | None = None
    # When it was produced (epoch seconds), if known: the order of "first come".
    produced_at: float | None = None


DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_KEY_BYTES = 4096
# Bounds of what a caller may ask for; beyond them a request is a mistake.
PRIORITY_BOUND = 1000
MAX_TOKENS_BOUND = 1_000_000


ERROR_TYPES = ("invalid_request", "budget_exceeded", "rate_limited", "upstream_error",
               "content_filter", "context_too_long", "pii_rejected", "internal_error")
# An ISO 8601 UTC time with milliseconds, as iso_timestamp_of writes it.
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


class RequestBody(BaseModel):
    """The JSON value of a `gpt-send` record (its key is the request id). Fields
    beyond these are ignored. Beyond what a schema can say, the parser refuses text
    with control characters or lone surrogates, an address that is no e-mail
    address, and images that are not PNG, JPEG, GIF or WebP (application.images)."""

    model_config = ConfigDict(strict=True, extra="ignore", title="gpt-send request")

    user_email: Annotated[str, Field(
        description="whose conversation this is: conversations, limits and erasure go by "
        "the address (case and Unicode normalised)",
        json_schema_extra={"format": "email", "minLength": 3, "maxLength": 254},
    )]
    message: Annotated[str | None, Field(
        description="the prompt; required, and may be empty only when images are given",
    )] = None
    context: Annotated[str | None, Field(
        description="earlier context from the caller, sent after the system prompt",
    )] = None
    model: Annotated[str | None, Field(
        min_length=1, description="default MODEL, or VISION_MODEL when images are given",
    )] = None
    max_tokens: Annotated[int | None, Field(
        ge=1, le=MAX_TOKENS_BOUND, description="the reply's limit; default MAX_TOKENS",
    )] = None
    temperature: Annotated[float | None, Field(
        ge=0, le=2, allow_inf_nan=False, description="default TEMPERATURE",
    )] = None
    system_prompt: Annotated[str | None, Field(description="custom instructions")] = None
    images: Annotated[list[str] | None, Field(
        description="base64 strings or data: URLs of PNG, JPEG, GIF or WebP images, 20 MB "
        "and 50 megapixels each at most",
    )] = None
    conversation_id: Annotated[str | None, Field(
        min_length=1, description="one of several conversations of the same user",
    )] = None
    priority: Annotated[int, Field(
        ge=-PRIORITY_BOUND, le=PRIORITY_BOUND,
        description="among requests waiting for a model call, higher goes first",
    )] = 0
    batch: Annotated[bool, Field(
        description="true: answered through the provider's Batch API, within a day, at half "
        "the price",
    )] = False


# What a request with a field of the wrong type or out of its bounds is told, by
# field, in the order the fields are checked (the first one wrong is named).
_FIELD_ERRORS = {
    "user_email": "'user_email' is required and must be a non-empty string",
    "images": "'images' must be a list of base64 strings",
    "message": "'message' is required and must be a string",
    "max_tokens": f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_BOUND}",
    "temperature": "'temperature' must be a number from 0 to 2",
    "priority": f"'priority' must be an integer from {-PRIORITY_BOUND} to {PRIORITY_BOUND}",
    "batch": "'batch' must be true or false",
    "context": "'context' must be a string",
    "model": "'model' must be a non-empty string",
    "system_prompt": "'system_prompt' must be a string",
    "conversation_id": "'conversation_id' must be a non-empty string",
}


class UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]
    total_tokens: Annotated[int, Field(ge=0, description="prompt_tokens + completion_tokens")]


class AnswerBody(BaseModel):
    """A request answered."""

    model_config = ConfigDict(extra="forbid", title="answer")

    response: Annotated[str, Field(description="the reply (a notice when its text was erased)")]
    model: Annotated[str, Field(description="the model that answered")]
    usage: UsageBody
    cost_usd: Annotated[float | None, Field(
        ge=0, description="at the price table; null when the model has no price",
    )]
    finish_reason: str
    timestamp: Annotated[str, Field(pattern=TIMESTAMP_PATTERN, description="when answered, UTC")]
    processing_time: Annotated[float, Field(ge=0, description="seconds")]
    cached: Annotated[Literal[True] | None, Field(
        description="present when answered without a call of its own (the response cache, "
        "or an identical request in flight); usage and cost are zero",
    )] = None
    batch: Annotated[Literal[True] | None, Field(
        description="present when answered through the Batch API, at its price",
    )] = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[ERROR_TYPES]  # type: ignore[valid-type]
    message: Annotated[str, Field(description="safe to show: it never quotes the request")]


class ErrorBody(BaseModel):
    """A request that cannot be answered: exactly one such response."""

    model_config = ConfigDict(extra="forbid", title="error")

    error: ErrorDetail
    timestamp: Annotated[str, Field(pattern=TIMESTAMP_PATTERN)]
    processing_time: Annotated[float, Field(ge=0, description="seconds")]


class ResponseBody(RootModel[AnswerBody | ErrorBody]):
    """The JSON value of a `gpt-response` record, under the request's key."""

    model_config = ConfigDict(title="gpt-response response")


MAX_REQUESTED_BY = 200


class ErasureBody(BaseModel):
    """The JSON value of a `gpt-erase` record: erase a user (right to erasure).
    Applied, or dead-lettered with its reason, then committed."""

    model_config = ConfigDict(strict=True, extra="ignore", title="gpt-erase request")

    user_email: Annotated[str, Field(
        description="the user to erase: every conversation of the address (case and "
        "Unicode normalised) becomes unreadable for good",
        json_schema_extra={"format": "email"},
    )]
    requested_by: Annotated[str | None, Field(
        max_length=MAX_REQUESTED_BY,
        description="who asked, recorded with the erasure (printable text); default \"user\"",
    )] = None


def request_id_of(key: bytes | None, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> str | None:
    """The request id a record key carries, exactly as sent: None when there is
    none, or it is too long or not UTF-8 text."""
    if not key or len(key) > max_key_bytes:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


# C0 controls and DEL, except tab, line feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_request(
    key: bytes | None,
    value: bytes | None,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
) -> ChatRequest:
    """Read one `gpt-send` record; raise InvalidRequest with a clear reason.

    The request id is the record key as sent (or, for a keyless record, the key of
    the platform's envelope); a key beyond `max_key_bytes` is refused without one,
    since no response could be matched to it.
    """
    if key and len(key) > max_key_bytes:
        raise InvalidRequest(f"the record key is {len(key)} bytes; the limit is {max_key_bytes}")
    request_id = request_id_of(key, max_key_bytes)
    if key and request_id is None:
        raise InvalidRequest("the record key (the request id) is not UTF-8 text")
    if request_id is not None and not request_id.isprintable():  # it is logged: one line
        raise InvalidRequest("the record key (the request id) must be printable text")
    if not value:
        raise InvalidRequest("the record has no value", request_id)
    if len(value) > max_bytes:
        raise InvalidRequest(
            f"the record is {len(value)} bytes; the limit is {max_bytes}", request_id
        )
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest("the record value is not valid JSON", request_id) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the record value must be a JSON object", request_id)
    body, envelope_key = _unwrap_envelope(body, request_id, max_key_bytes)
    if request_id is None and envelope_key is not None:
        request_id = envelope_key
    if request_id is None:
        raise InvalidRequest("the record has no key (the request id)")
    try:
        return _build(request_id, body)
    except InvalidImage as error:
        raise InvalidRequest(str(error), request_id) from None
    except (OverflowError, RecursionError):
        raise InvalidRequest("the request holds a value too large to read", request_id) from None


def _unwrap_envelope(
    body: dict[str, Any], request_id: str | None, max_key_bytes: int
) -> tuple[dict[str, Any], str | None]:
    """Accept `{"key": ..., "value": {...}}`, the shape the platform's docs show."""
    if "value" not in body or "user_email" in body:
        return body, None
    inner = body["value"]
    if isinstance(inner, str):
        try:
            inner = json.loads(inner)
        except (ValueError, RecursionError):
            raise InvalidRequest("the envelope's value is not valid JSON", request_id) from None
    if not isinstance(inner, dict):
        raise InvalidRequest("the envelope's value must be a JSON object", request_id)
    key = body.get("key")
    if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "":
        return inner, None
    if isinstance(key, int) and not -(2**63) <= key < 2**63:
        raise InvalidRequest("the envelope's key is too large a number", request_id)
    envelope_key = str(key)
    if unreadable(envelope_key):
        raise InvalidRequest(f"the envelope's key {unreadable(envelope_key)}", request_id)
    if not envelope_key.isprintable():
        raise InvalidRequest("the envelope's key must be printable text", request_id)
    if len(envelope_key.encode()) > max_key_bytes:
        raise InvalidRequest(
            f"the envelope's key is {len(envelope_key.encode())} bytes; the limit is {max_key_bytes}",
            request_id,
        )
    return inner, envelope_key


def _build(request_id: str, body: dict[str, Any]) -> ChatRequest:
    def fail(message: str) -> InvalidRequest:
        return InvalidRequest(message, request_id)

    try:
        valid = RequestBody.model_validate(body)
    except ValidationError as error:
        raise _field_error(error, body, fail) from None

    user_email = valid.user_email
    if not user_email.strip():
        raise fail(_FIELD_ERRORS["user_email"])
    if unreadable(user_email):
        raise fail(f"'user_email' {unreadable(user_email)}")
    if not EMAIL_SHAPE.match(user_email.strip()):  # never quoted: it may be anything
        raise fail("'user_email' must be an e-mail address")
    try:  # one person, one address: what cannot be compared safely is refused
        normalise_email(user_email)
    except InvalidAddress as error:
        raise fail(f"'user_email' cannot be used: {error}") from None

    images = tuple(decode_image(item, n) for n, item in enumerate(valid.images or (), 1))
    message = valid.message if valid.message is not None else ("" if images else None)
    if message is None:
        raise fail(_FIELD_ERRORS["message"])
    if not message.strip() and not images:
        raise fail("'message' may be empty only when images are given")
    if unreadable(message):
        raise fail(f"'message' {unreadable(message)}")

    return ChatRequest(
        request_id=request_id,
        user_email=user_email.strip(),
        message=message,
        context=_optional_text(valid.context, "context", fail),
        model=_optional_text(valid.model, "model", fail, non_empty=True),
        max_tokens=valid.max_tokens,
        temperature=valid.temperature,
        system_prompt=_optional_text(valid.system_prompt, "system_prompt", fail),
        images=images,
        conversation_id=_optional_text(valid.conversation_id, "conversation_id", fail, non_empty=True),
        priority=valid.priority,
        batch=valid.batch,
    )


def _field_error(error: ValidationError, body: dict[str, Any], fail: Any) -> InvalidRequest:
    """The first wrong field's message, in the order of _FIELD_ERRORS; an image that
    is no string is named by its number, as application.images names it."""
    wrong = {str(item["loc"][0]): item["loc"] for item in error.errors() if item["loc"]}
    for name, message in _FIELD_ERRORS.items():
        if name not in wrong:
            continue
        loc = wrong[name]
        if name == "images" and len(loc) > 1 and isinstance(loc[1], int):
            decode_image(body["images"][loc[1]], loc[1] + 1)  # raises its InvalidImage
        return fail(message)
    return fail("the request is not a valid chat request")  # not reached: every field named


def _optional_text(value: str | None, name: str, fail: Any, non_empty: bool = False) -> str | None:
    if value is None:
        return None
    if non_empty and not value.strip():
        raise fail(_FIELD_ERRORS[name])
    if unreadable(value):
        raise fail(f"'{name}' {unreadable(value)}")
    return value.strip() if non_empty else (value or None)


def unreadable(text: str) -> str | None:
    """Why the text cannot be passed on, or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: JSON allows them, UTF-8 does not
        return "is not valid text"
    if _CONTROL.search(text):
        return "contains control characters"
    return None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResponse:
    """One record on `gpt-response`: an answer or an error, built by
    `answer` or `failure` and serialised by `to_json` / `encode` only."""

    timestamp: str
    processing_time: float
    text: str | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    finish_reason: str | None = None
    source: str | None = None  # one of domain.conversation.REPLY_SOURCES for an answer
    error_type: str | None = None
    error_message: str | None = None
    # The answer's text was erased (or expired) in the store: `text` says so.
    withheld: bool = False
    # Not a response at all: the request was parked in a Batch API batch, and its
    # response is produced when the batch ends (nothing goes out for it now).
    parked: bool = False

    @classmethod
    def of(cls, outcome: Outcome) -> ChatResponse:
        """The response for a request's recorded outcome."""
        if isinstance(outcome, Failure):
            return cls.failure(
                outcome.error_type, outcome.error_message, outcome.failed_at,
                outcome.processing_time,
            )
        return cls.answer(
            text=str(outcome.reply), model=outcome.model,
            usage=Usage(outcome.prompt_tokens, outcome.completion_tokens),
            cost_usd=outcome.cost, finish_reason=outcome.finish_reason,
            timestamp=outcome.answered_at, processing_time=outcome.processing_time,
            source=outcome.source, withheld=isinstance(outcome.reply, Shredded),
        )

    @classmethod
    def answer(
        cls, *, text: str, model: str, usage: Usage, cost_usd: float | None,
        finish_reason: str, timestamp: str, processing_time: float, source: str = "model",
        withheld: bool = False,
    ) -> ChatResponse:
        return cls(timestamp, processing_time, text=text, model=model, usage=usage,
                   cost_usd=cost_usd, finish_reason=finish_reason, source=source,
                   withheld=withheld)

    @classmethod
    def failure(
        cls, error_type: str, message: str, timestamp: str, processing_time: float
    ) -> ChatResponse:
        return cls(timestamp, processing_time, error_type=error_type, error_message=message)

    @classmethod
    def parked_in_batch(cls, at: datetime, started: float) -> ChatResponse:
        """The request waits in a batch: its record is finished without a response."""
        return cls(iso_timestamp_of(at), round(time.perf_counter() - started, 3), parked=True)

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def outcome(self) -> str:
        """"answered", or the error's type."""
        return "answered" if self.error_type is None else self.error_type

    @property
    def shared(self) -> bool:
        """Answered without a call of its own: from the cache or an identical call."""
        return self.source in ("cache", "shared")

    def with_text(self, text: str) -> ChatResponse:
        return replace(self, text=text)

    @classmethod
    def rejection(
        cls, error_type: str, message: str, at: datetime, started: float
    ) -> ChatResponse:
        """A request refused before it reached the use case, which began (by
        `time.perf_counter()`) at `started`."""
        return cls.failure(
            error_type, message, iso_timestamp_of(at), round(time.perf_counter() - started, 3)
        )

    def to_json(self) -> dict[str, Any]:
        if self.error_type is not None:
            return {
                "error": {"type": self.error_type, "message": self.error_message or ""},
                "timestamp": self.timestamp,
                "processing_time": self.processing_time,
            }
        usage = self.usage or Usage()
        payload: dict[str, Any] = {
            "response": self.text,
            "model": self.model,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "cost_usd": self.cost_usd,
            "finish_reason": self.finish_reason,
            "timestamp": self.timestamp,
            "processing_time": self.processing_time,
        }
        if self.shared:
            payload["cached"] = True
        elif self.source == "batch":
            payload["batch"] = True
        return payload

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def iso_timestamp_of(at: datetime) -> str:
    """UTC time as the contract shows it, e.g. 2024-01-01T00:00:00.000Z."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
