"""Local fake of the OpenAI Chat Completions and Batch APIs, for tests.

Run it standalone::

    python -m tests.support.fake_openai --port 8099 --latency 0.2

or from tests through :class:`FakeOpenAIServer`, which starts it as a
subprocess on a free loopback port and drives it over HTTP.

``POST /v1/chat/completions`` records every request body and answers in
OpenAI's wire format.  By default the reply echoes what the model saw::

    echo: <last user text> | seen: <N> messages[ | images: <K>]

Tests can queue *steps* that change the next answers (see :func:`_pick_step`):

* ``{"reply": "text", "finish_reason": "stop"}`` - answer with this text
* ``{"cached_tokens": N}`` - say that N prompt tokens came from the prompt cache
* ``{"status": 429, "headers": {"retry-after": "1"}, "body": {...}}`` - HTTP
  error; ``body`` defaults to an OpenAI-shaped ``{"error": {...}}``
* ``{"delay": seconds}`` - wait first (combinable with the others)
* ``{"malformed": true}`` - HTTP 200 with a body that is not JSON
* ``{"disconnect": true}`` - close the connection without answering
* ``"match": "substring"`` on any step - only for a request whose last user
  message contains the substring

Streaming (``stream=True``) is not supported.

Model limits, as the real API checks them before anything is generated: for a
model of :data:`MODEL_LIMITS` (its name, or the name without a ``-YYYY-MM-DD``
snapshot date), ``max_tokens`` (or ``max_completion_tokens``) above its output
limit is a 400 ``invalid_value`` on ``max_tokens``, and the prompt (counted as
:func:`prompt_tokens` counts it) plus ``max_tokens`` beyond its context window a
400 ``context_length_exceeded`` on ``messages``, both in OpenAI's words and
logged as ``invalid`` calls.

Models, as the real API treats them (checked before limits, steps and chaos; an
outage still comes first): a model id it does not serve is a 404 ``model_not_found``
(``The model `x` does not exist or you do not have access to it.``).  Served: the
models of :data:`MODEL_LIMITS`, their dated snapshots (``o4-mini-2025-04-16``) and
fine-tunes (``ft:gpt-4o-mini-2024-07-18:org::id``), and the *extra* names a test
accepts (``FakeOpenAIServer(models=[...])``, ``--model NAME``, or ``POST
/_control/models`` ``{"extra": [...]}``; extra names are served as plain chat
models, their limits unchecked).  ``gpt-4o-latest`` is not served, as on the real
API.  ``GET /v1/models`` lists the served names of the table and the extra ones, and
``GET /v1/models/{id}`` answers a served id with its model object and any other with
the same 404 ``model_not_found``; both refuse a key not accepted with the 401.  A reasoning model (:data:`REASONING_MODELS`: the o-series and gpt-5, as
snapshots and fine-tunes too) refuses ``max_tokens`` with OpenAI's 400
``unsupported_parameter`` (``Unsupported parameter: 'max_tokens' is not supported
with this model. Use 'max_completion_tokens' instead.``, param ``max_tokens``) and a
``temperature`` other than 1 with 400 ``unsupported_value``; both are ``invalid``
calls.  Batch lines are checked the same way (a 404 or 400 line in the error file).

Faults at random (*chaos*), for fault-injection tests: after
``POST /_control/chaos`` ``{"seed": 7, "rates": {"429": 0.08, "500": 0.06,
"503": 0.02, "timeout": 0.04, "disconnect": 0.04, "malformed": 0.04},
"retry_after": [0.1, 1.0], "timeout_delay": 5.0}`` every request that no step
applies to takes one draw from ``random.Random(seed)`` and, with those
probabilities, gets a fault instead of a completion:

* ``429`` - OpenAI-shaped error with ``retry-after`` (seconds, up to 3 decimals,
  uniform in ``retry_after``) and the same value as ``retry-after-ms``
* ``500`` / ``503`` - that status, OpenAI-shaped error
* ``timeout`` - wait ``timeout_delay`` seconds more, then a normal completion
  (meant to arrive after the client gave up)
* ``disconnect`` - close the connection without answering
* ``malformed`` - HTTP 200 with a body that is not JSON

The draws follow arrival order, so the k-th request answered by chaos always
gets the same outcome for a seed.  ``{}`` or ``{"rates": {}}`` turns chaos off.

An *outage* (``POST /_control/outage`` ``{"seconds": 4, "status": 503}``)
answers every completion request arriving in the next N seconds with that
status at once (no latency), before any step or chaos draw: a region is down.
``{"seconds": 0}`` ends it.  Optional: ``"code"`` gives the error body that
code in OpenAI's words (``{"status": 429, "code": "insufficient_quota"}``: the
account's quota is used up), and ``"model"`` limits the outage to requests for
that model (the others are served as usual).

API keys: by default any key (or none) is accepted.  After
``POST /_control/api_keys`` ``{"keys": ["sk-a", "sk-b"]}`` only a request whose
``Authorization: Bearer <key>`` names one of them is answered; any other gets a
401 at once (no latency), before outage, step or chaos, in OpenAI's format:
``{"error": {"message": "Incorrect API key provided: sk-*****wxyz.", "type":
"invalid_request_error", "param": null, "code": "invalid_api_key"}}`` (the key
masked as OpenAI masks it: its first 3 and last 4 characters; all stars when
shorter than 12), or ``"You didn't provide an API key."`` without one.
``{"keys": null}`` or a reset accepts any key again.  The server never logs or
returns a key in full.

The global latency delays every other answer (steps, chaos faults, completions).

Batch API (what ``client.files`` and ``client.batches`` of the SDK use), in
OpenAI's wire format; every endpoint refuses a key not accepted (401, as above):

* ``POST /v1/files`` (multipart ``purpose``, ``file``) stores a file and answers
  its file object (``file-...``, status ``processed``); ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (the raw bytes) and ``DELETE /v1/files/{id}``
* ``POST /v1/batches`` ``{"input_file_id", "endpoint": "/v1/chat/completions",
  "completion_window": "24h", "metadata"?}`` answers the batch (``batch_...``,
  status ``validating``); ``GET /v1/batches/{id}``, ``GET /v1/batches``
  (newest first, ``limit`` and ``after``), ``POST /v1/batches/{id}/cancel``
  (``cancelling``, then ``cancelled``; 409 once the batch has ended)

A batch's status moves with time (a task per batch, and every GET): over its
*delay* (0.5 s unless set), ``validating`` for the first 10 %, ``in_progress``
until 90 %, ``finalizing``, then ``completed``.  Each input line must be
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` with
custom ids unique; any line that is not (or an empty file) makes the batch
``failed`` at the end of validation, with ``errors`` ``{"object": "list",
"data": [{"code", "message", "param", "line"}]}`` (codes ``invalid_json_line``,
``duplicate_custom_id``, ``missing_required_parameter``, ``invalid_method``,
``invalid_url``, ``model_mismatch`` (one model per batch), ``empty_file``).  On entering ``finalizing`` every line is
answered as ``/v1/chat/completions`` would answer its body, steps included
(``reply``, ``cached_tokens``, ``match``...; a ``status`` step gives that line
that HTTP error, ``malformed`` or ``disconnect`` a 500; chaos, outage and
latency do not apply).  The output file holds the answered lines
``{"id": "batch_req_...", "custom_id", "response": {"status_code": 200,
"request_id", "body": <chat.completion>}, "error": null}``, the error file the
others (``status_code`` 4xx/5xx, ``body`` ``{"error": {...}}``); a file exists
only when it has lines.  ``request_counts`` follows.

``POST /_control/batches`` ``{"delay": s, "outcome": "completed" | "expired" |
"failed", "answered": n}`` (any of them) sets how the batches created from then
on behave: ``expired`` answers the first ``answered`` lines (0 by default) and
ends ``expired`` at the delay, the other lines in the error file as
``{"response": null, "error": {"code": "batch_expired", ...}}`` (a cancelled
batch's as ``batch_cancelled``); ``failed`` fails validation with
``token_limit_exceeded``.  ``GET /_control/batches`` lists the batches created,
oldest first, with their custom ids and request bodies.

Every completion request is logged as a *call* when its outcome is decided::

    {"text": <last user text>, "kind": ..., "received_at": <epoch s>,
     "answered_at": <epoch s, when the response was written> | null}

and so is every line a batch answers, with kind ``batch`` and also
``"batch_id"``, ``"custom_id"`` and ``"status"`` (the line's HTTP status).

with ``kind`` one of ``ok`` (a normal completion the client received; scripted
replies included), ``429``, ``500``, ``503``, ``timeout``, ``disconnect``,
``malformed`` (chaos), ``outage``, ``batch`` (see above), ``scripted`` (a step answering an error,
malformed body or disconnect), ``invalid`` (400: the body had no
``messages``, its model cannot take it or its parameters; or 404: a model not
served) or ``unauthorized`` (401: a key not accepted).  A normal
completion that cannot be written because the client has gone becomes
``timeout`` (answered_at null): the client never received it.
``answered_at`` is null for ``disconnect`` and for every answer the client was
no longer there to receive.

Control endpoints (JSON): ``POST /_control/script`` (list of steps, appended),
``GET /_control/requests`` (request bodies), ``GET /_control/timings``,
``GET /_control/calls`` (the call log), ``GET /_control/faults`` (``{kind:
count}`` over the calls, ``ok`` and ``batch`` excluded), ``POST /_control/chaos``,
``POST /_control/outage``, ``POST /_control/api_keys``, ``POST`` and ``GET
/_control/batches``, ``POST /_control/models``, ``POST /_control/reset`` (script,
logs, files, batches, chaos, outage, accepted keys, extra models, latency and batch
settings back to the start),
``POST /_control/latency``
``{"seconds": x}``, ``GET /_control/health``.

The server half imports only aiohttp and the standard library; the client half
(:class:`FakeOpenAIServer`) only the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import http.client
import itertools
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

_HOST = "127.0.0.1"
_READY_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("Permission denied", "invalid_request_error", None),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request", "server_error", None),
    503: ("The engine is currently overloaded", "server_error", None),
}


# Error bodies by code, in OpenAI's words: (message, type).
_CODED_ERRORS: dict[str, tuple[str, str]] = {
    "insufficient_quota": (
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota"),
    "unsupported_country_region_territory": (
        "Country, region, or territory not supported", "request_forbidden"),
}


def _outage_body(status: int, code: str | None) -> dict[str, Any]:
    """An outage's error payload: the status's, or the code's when one is set."""
    if code is None:
        return _error_body(status)
    message, kind = _CODED_ERRORS.get(code, (f"Fake error {status}", "invalid_request_error"))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error_body(status: int) -> dict[str, Any]:
    """Return an error payload in OpenAI's shape for an HTTP status."""
    message, kind, code = _DEFAULT_ERRORS.get(status, (f"Fake error {status}", "server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# (context window, most completion tokens) of the models whose limits are checked,
# OpenAI's published figures (kept apart from the service's own table on purpose).
MODEL_LIMITS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("gpt-4o", "gpt-4o-mini", "chatgpt-4o-latest"), (128_000, 16_384)),
    **dict.fromkeys(("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"), (1_047_576, 32_768)),
    **dict.fromkeys(("o1", "o3", "o3-mini", "o4-mini"), (200_000, 100_000)),
    **dict.fromkeys(("gpt-5", "gpt-5-mini", "gpt-5-nano"), (400_000, 128_000)),
    "gpt-4o-2024-05-13": (128_000, 4_096),
    "gpt-4-turbo": (128_000, 4_096),
    "gpt-4": (8_192, 8_192),
    "gpt-3.5-turbo": (16_385, 4_096),
    "o1-mini": (128_000, 65_536),
}
_SNAPSHOT_DATE = re.compile(r"-\d{4}-\d{2}-\d{2}$")
# The reasoning models: max_completion_tokens only, and the default temperature only.
REASONING_MODELS = frozenset({"o1", "o1-mini", "o3", "o3-mini", "o4-mini",
                              "gpt-5", "gpt-5-mini", "gpt-5-nano"})


def _base_model(model: str) -> str:
    """A served model's table name: without fine-tune wrapping and snapshot date."""
    if model.startswith("ft:"):
        model = model.removeprefix("ft:").split(":", 1)[0]
    return _SNAPSHOT_DATE.sub("", model)


def _unknown_model(body: dict[str, Any], extra: frozenset[str]) -> dict[str, Any] | None:
    """The 404 payload the real API answers for a model id it does not serve, or None."""
    model = body.get("model")
    if isinstance(model, str) and (model in extra or _base_model(model) in MODEL_LIMITS):
        return None
    if not isinstance(model, str) or not model:
        return _invalid_request("you must provide a model parameter", "model",
                                "missing_required_parameter")
    return _invalid_request(f"The model `{model}` does not exist or you do not have access to it.",
                            "model", "model_not_found")


def _unsupported_parameters(body: dict[str, Any], extra: frozenset[str]) -> dict[str, Any] | None:
    """The 400 payload the real API answers for a parameter the model does not take, or None."""
    model = body.get("model")
    if not isinstance(model, str) or model in extra or _base_model(model) not in REASONING_MODELS:
        return None
    if body.get("max_tokens") is not None:
        return _invalid_request(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return _invalid_request(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.", "temperature", "unsupported_value")
    return None


def _refusal(body: dict[str, Any], messages: list[dict[str, Any]],
             extra: frozenset[str]) -> tuple[int, dict[str, Any]] | None:
    """(status, payload) of the real API's refusal of a request body, or None: the model
    not served (404), a parameter it does not take, or a call beyond its limits (400)."""
    if (unknown := _unknown_model(body, extra)) is not None:
        status = 404 if unknown["error"]["code"] == "model_not_found" else 400
        return status, unknown
    for refusal in (_unsupported_parameters(body, extra), _over_limits(body, messages)):
        if refusal is not None:
            return 400, refusal
    return None


def _over_limits(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The 400 payload the real API answers for a call its model cannot take, or None."""
    model = body.get("model")
    limits = None
    if isinstance(model, str):
        limits = MODEL_LIMITS.get(model) or MODEL_LIMITS.get(_base_model(model))
    if limits is None:
        return None
    window, most = limits
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    asked = asked if isinstance(asked, int) and not isinstance(asked, bool) else 0
    param = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
    if asked > most:
        return _invalid_request(
            f"{param} is too large: {asked}. This model supports at most {most} completion "
            f"tokens, whereas you provided {asked}.", param, "invalid_value")
    prompt = prompt_tokens(messages)
    if prompt + asked > window:
        return _invalid_request(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + asked} tokens ({prompt} in the messages, {asked} in the completion). "
            "Please reduce the length of the messages or completion.",
            "messages", "context_length_exceeded")
    return None


def _masked(key: str) -> str:
    """A key as OpenAI's 401 message shows it: a few characters at each end, stars between."""
    if len(key) < 12:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def _unauthorized_body(authorization: str | None) -> dict[str, Any]:
    """OpenAI's 401 payload for a request with this Authorization header."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        message = "You didn't provide an API key."
    else:
        message = f"Incorrect API key provided: {_masked(key.strip())}."
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "invalid_api_key"}}


def _parts(content: Any) -> list[dict[str, Any]]:
    """Normalise message content (a string or a list of parts) to a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return [{"type": "text", "text": str(content)}]


def _text(message: dict[str, Any]) -> str:
    """Return the text of a message, text parts joined by a space."""
    return " ".join(p.get("text", "") for p in _parts(message.get("content")) if p.get("type") == "text")


def _image_count(message: dict[str, Any]) -> int:
    """Return how many image parts a message carries."""
    return sum(1 for p in _parts(message.get("content")) if p.get("type") == "image_url")


def _last_user_message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the last message with role ``user`` ({} if there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message
    return {}


def default_reply(messages: list[dict[str, Any]]) -> str:
    """The deterministic echo reply used when no scripted step applies."""
    last = _last_user_message(messages)
    reply = f"echo: {_text(last)} | seen: {len(messages)} messages"
    images = _image_count(last)
    if images:
        reply += f" | images: {images}"
    return reply


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Deterministic prompt token count: words + 3 per message + 85 per image."""
    return sum(len(_text(m).split()) + 3 + 85 * _image_count(m) for m in messages)


CHAOS_KINDS = ("429", "500", "503", "timeout", "disconnect", "malformed")
"""Fault kinds chaos can inject, in the order their probabilities are stacked for a draw."""


class _Chaos:
    """Random fault injection: one draw per request from ``random.Random(seed)``."""

    def __init__(self, seed: int, rates: dict[str, float], retry_after: tuple[float, float],
                 timeout_delay: float) -> None:
        """Start the draws for ``seed``; ``rates`` maps kinds of :data:`CHAOS_KINDS` to probabilities."""
        self.seed = seed
        self.rates = rates
        self.retry_after = retry_after
        self.timeout_delay = timeout_delay
        self._draws = random.Random(seed)
        # A separate stream, so Retry-After values do not shift the fault draws.
        self._retry_after_draws = random.Random(f"{seed}/retry-after")

    def draw(self) -> str | None:
        """Return the fault for the next request, or None for a normal answer."""
        value = self._draws.random()
        edge = 0.0
        for kind in CHAOS_KINDS:
            edge += self.rates.get(kind, 0.0)
            if value < edge:
                return kind
        return None

    def retry_after_seconds(self) -> float:
        """A Retry-After for a 429, uniform in the configured range, to the millisecond."""
        return round(self._retry_after_draws.uniform(*self.retry_after), 3)

    def describe(self) -> dict[str, Any]:
        """The configuration, as JSON."""
        return {"seed": self.seed, "rates": self.rates, "retry_after": list(self.retry_after),
                "timeout_delay": self.timeout_delay}


def _parse_chaos(payload: Any) -> _Chaos | None:
    """Validate a ``/_control/chaos`` body; None means chaos off.  Raises ValueError."""
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    raw_rates = payload.get("rates") or {}
    if not isinstance(raw_rates, dict):
        raise ValueError("'rates' must be an object {kind: probability}")
    unknown = sorted(set(raw_rates) - set(CHAOS_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {list(CHAOS_KINDS)}")
    rates = {kind: float(raw_rates[kind]) for kind in CHAOS_KINDS if kind in raw_rates}
    if any(not 0.0 <= rate <= 1.0 for rate in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
        raise ValueError("each rate must be in [0, 1] and together at most 1")
    if not any(rates.values()):
        return None
    low, high = (float(x) for x in payload.get("retry_after", (0.1, 1.0)))
    timeout_delay = float(payload.get("timeout_delay", 5.0))
    if not 0.0 <= low <= high or timeout_delay < 0:
        raise ValueError("'retry_after' must be [low, high] with 0 <= low <= high; 'timeout_delay' >= 0")
    return _Chaos(int(payload.get("seed", 0)), rates, (low, high), timeout_delay)


def _retry_after_headers(seconds: float) -> dict[str, str]:
    """Retry-After (seconds, up to 3 decimals) and retry-after-ms for the same wait."""
    return {"retry-after": f"{seconds:.3f}".rstrip("0").rstrip("."),
            "retry-after-ms": str(round(seconds * 1000))}


BATCH_OUTCOMES = ("completed", "expired", "failed")
"""How the next batches end (``POST /_control/batches``)."""

_BATCH_ENDPOINT = "/v1/chat/completions"
_BATCH_WINDOW_SECONDS = 24 * 3600
_BATCH_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
# Line-level outcomes of requests a batch never ran, as OpenAI writes them in the error file.
_UNANSWERED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was cancelled before it could be executed."),
}


def _new_id(prefix: str) -> str:
    """An id in OpenAI's style: a prefix and 24 random hex digits."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _invalid_request(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped ``invalid_request_error`` payload."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    """One entry of a failed batch's ``errors.data``."""
    return {"code": code, "message": message, "param": param, "line": line}


def _read_batch_input(content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate a batch input file as OpenAI does: its requests ``{"custom_id", "body"}``
    in file order, and the validation errors (any error fails the whole batch)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_line_error("invalid_file_format", "The batch input file is not valid UTF-8 text.", None)]
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            errors.append(_line_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        if not isinstance(item, dict):
            errors.append(_line_error("invalid_json_line", "This line is not a JSON object.", number))
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_line_error("missing_required_parameter",
                                      "Missing required parameter: 'custom_id'.", number, "custom_id"))
        elif custom_id in seen:
            errors.append(_line_error(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The custom_id "
                "parameter must be unique for each request in a batch.", number, "custom_id"))
        if item.get("method") != "POST":
            errors.append(_line_error("invalid_method", "Only the POST method is supported for batch requests.",
                                      number, "method"))
        if item.get("url") != endpoint:
            errors.append(_line_error("invalid_url",
                                      "The URL provided for this request does not match the batch endpoint.",
                                      number, "url"))
        if not isinstance(item.get("body"), dict):
            errors.append(_line_error("missing_required_parameter",
                                      "Missing required parameter: 'body'.", number, "body"))
        elif requests and isinstance(requests[0]["body"], dict) and \
                item["body"].get("model") != requests[0]["body"].get("model"):
            errors.append(_line_error("model_mismatch",
                                      "All requests in a batch must use the same model.",
                                      number, "body.model"))
        if isinstance(custom_id, str) and custom_id:
            seen.add(custom_id)
            requests.append({"custom_id": custom_id, "body": item.get("body")})
    if not requests and not errors:
        errors.append(_line_error("empty_file", "The batch input file is empty.", None))
    return requests, errors


class _FakeBatch:
    """One batch: its OpenAI object, its requests and how (and when) it will end."""

    def __init__(self, obj: dict[str, Any], requests: list[dict[str, Any]],
                 errors: list[dict[str, Any]], settings: dict[str, Any]) -> None:
        self.obj = obj
        self.requests = requests
        self.errors = errors
        self.delay = float(settings["delay"])
        self.outcome = str(settings["outcome"])
        self.answered = int(settings["answered"])
        self.created = time.time()
        self.started = time.monotonic()
        self.cancel_started: float | None = None
        # custom_id -> output or error line, for the requests run so far
        self.answers: dict[str, dict[str, Any]] = {}

    def epoch(self, moment: float) -> int:
        """Unix seconds of a time.monotonic() moment of this batch's life."""
        return int(self.created + (moment - self.started))

    def next_change(self) -> float | None:
        """The time.monotonic() moment the status moves on next; None once ended.

        validating lasts the first 10 % of the delay, in_progress until 90 % (until
        the end for an expiring batch), finalizing the rest; cancelling 10 %."""
        status = self.obj["status"]
        if status in _BATCH_ENDED:
            return None
        if status == "cancelling":
            assert self.cancel_started is not None
            return self.cancel_started + 0.1 * self.delay
        if status == "validating":
            return self.started + 0.1 * self.delay
        if status == "in_progress" and self.outcome == "completed":
            return self.started + 0.9 * self.delay
        return self.started + self.delay

    def describe(self) -> dict[str, Any]:
        """What ``GET /_control/batches`` says of the batch."""
        return {
            "id": self.obj["id"], "status": self.obj["status"], "outcome": self.outcome,
            "delay": self.delay, "input_file_id": self.obj["input_file_id"],
            "custom_ids": [r["custom_id"] for r in self.requests],
            "bodies": [r["body"] for r in self.requests],
            "request_counts": self.obj["request_counts"], "errors": self.obj["errors"],
        }


class FakeOpenAIState:
    """Mutable state of one fake server: script, logs, latency, chaos, outage, files and batches."""

    def __init__(self, latency: float = 0.0, batch_delay: float = 0.5,
                 extra_models: frozenset[str] = frozenset()) -> None:
        """Start with an empty script, no requests and the given latency; ``extra_models``
        are served beside the known ones."""
        self.initial_extra_models = frozenset(extra_models)
        self.extra_models = self.initial_extra_models
        self.initial_latency = latency
        self.latency = latency
        self.steps: list[dict[str, Any]] = []
        self.requests: list[Any] = []
        # (last user text, received at, answered at) per completion, epoch seconds:
        # the load test subtracts model time from end-to-end latency with these.
        self.timings: list[tuple[str, float, float]] = []
        # One entry per completion request: see the module docstring.
        self.calls: list[dict[str, Any]] = []
        self.chaos: _Chaos | None = None
        self.outage_until = 0.0  # time.monotonic() deadline
        self.outage_status = 503
        self.outage_code: str | None = None  # the error body's code, if set
        self.outage_model: str | None = None  # None: every model
        self.api_keys: frozenset[str] | None = None  # None: any key is accepted
        self.ids = itertools.count(1)
        # Files by id: (file object, content).
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, _FakeBatch] = {}
        self.initial_batch_settings: dict[str, Any] = {
            "delay": batch_delay, "outcome": "completed", "answered": 0}
        self.batch_settings = dict(self.initial_batch_settings)
        # The tasks that move batches on in time (GETs move them on as well).
        self.batch_tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        """Forget steps, logs, files and batches, end chaos and outage; latency and
        batch settings back to their start values."""
        self.steps.clear()
        self.requests.clear()
        self.timings.clear()
        self.calls.clear()
        self.chaos = None
        self.outage_until = 0.0
        self.api_keys = None
        self.extra_models = self.initial_extra_models
        self.latency = self.initial_latency
        for task in self.batch_tasks:
            task.cancel()
        self.batch_tasks.clear()
        self.batches.clear()
        self.files.clear()
        self.batch_settings = dict(self.initial_batch_settings)

    def accepts(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may be answered."""
        if self.api_keys is None:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and key.strip() in self.api_keys

    def in_outage(self) -> bool:
        """Whether an outage is going on."""
        return time.monotonic() < self.outage_until

    def record(self, text: str, kind: str, received_at: float) -> dict[str, Any]:
        """Append a call to the log and return its entry (``answered_at`` filled later)."""
        entry = {"text": text, "kind": kind, "received_at": received_at, "answered_at": None}
        self.calls.append(entry)
        return entry

    def faults(self) -> dict[str, int]:
        """{kind: count} over the calls, ``ok`` and ``batch`` excluded."""
        return dict(Counter(call["kind"] for call in self.calls if call["kind"] not in ("ok", "batch")))

    def pick_step(self, last_user_text: str) -> dict[str, Any] | None:
        """Pop the step for a request whose last user message is ``last_user_text``.

        A step whose ``match`` occurs in the text wins, wherever it is queued
        (so concurrent tests can target their own requests); otherwise the
        first step without ``match`` applies.  None when neither exists.
        """
        for i, step in enumerate(self.steps):
            if "match" in step and str(step["match"]) in last_user_text:
                return self.steps.pop(i)
        for i, step in enumerate(self.steps):
            if "match" not in step:
                return self.steps.pop(i)
        return None

    def completion_payload(self, body: dict[str, Any], messages: list[dict[str, Any]],
                           step: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` for a request body (the step's reply, or the echo)."""
        finish_reason = step.get("finish_reason", "stop")
        if "reply" in step:
            reply = step["reply"]
        else:  # as a model does, the echo stops at max_tokens
            reply = default_reply(messages)
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and len(reply.split()) > limit > 0:
                reply, finish_reason = " ".join(reply.split()[:limit]), "length"
        prompt = prompt_tokens(messages)
        completion_tokens = len(str(reply).split())
        return {
            "id": f"chatcmpl-fake-{next(self.ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": step.get("cached_tokens", 0)},
            },
            "system_fingerprint": "fake",
        }

    # -- files and batches ---------------------------------------------------

    def add_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        """Store a file; its OpenAI file object."""
        obj = {"id": _new_id("file-"), "object": "file", "bytes": len(content),
               "created_at": int(time.time()), "filename": filename, "purpose": purpose,
               "status": "processed", "status_details": None, "expires_at": None}
        self.files[obj["id"]] = (obj, content)
        return obj

    def create_batch(self, input_file_id: str, content: bytes, completion_window: str,
                     metadata: dict[str, str] | None) -> _FakeBatch:
        """A new batch (status ``validating``) over an input file, ending as set for new batches."""
        requests, errors = _read_batch_input(content, _BATCH_ENDPOINT)
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": _new_id("batch_"), "object": "batch", "endpoint": _BATCH_ENDPOINT,
            "model": None, "errors": None,
            "input_file_id": input_file_id, "completion_window": completion_window,
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + _BATCH_WINDOW_SECONDS,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        models = {r["body"].get("model") for r in requests if isinstance(r["body"], dict)}
        if len(models) == 1:
            obj["model"] = models.pop()
        batch = _FakeBatch(obj, requests, errors, self.batch_settings)
        self.batches[obj["id"]] = batch
        return batch

    def advance_batch(self, batch: _FakeBatch) -> None:
        """Apply every change of status due by now, in order (idempotent)."""
        now = time.monotonic()
        while (moment := batch.next_change()) is not None and now >= moment:
            self._batch_step(batch, moment)

    def cancel_batch(self, batch: _FakeBatch) -> None:
        """Start cancelling a batch that has not ended: ``cancelling``, then ``cancelled``."""
        self.advance_batch(batch)
        batch.cancel_started = time.monotonic()
        batch.obj.update(status="cancelling", cancelling_at=batch.epoch(batch.cancel_started))

    def _batch_step(self, batch: _FakeBatch, moment: float) -> None:
        """One change of status, due at ``moment``."""
        obj, at = batch.obj, batch.epoch(moment)
        status = obj["status"]
        if status == "cancelling":
            self._end_batch(batch, "cancelled", at)
        elif status == "validating":
            errors = batch.errors or ([_line_error(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {obj['model'] or 'the model'} in organization "
                "org-fake. Limit: 90,000 enqueued tokens. Please try again once some in_progress "
                "batches have been completed.", None)] if batch.outcome == "failed" else [])
            if errors:
                obj.update(status="failed", failed_at=at, errors={"object": "list", "data": errors})
            else:
                obj.update(status="in_progress", in_progress_at=at,
                           request_counts={"total": len(batch.requests), "completed": 0, "failed": 0})
        elif status == "in_progress" and batch.outcome == "expired":
            self._run_batch_requests(batch, batch.requests[:batch.answered])
            self._end_batch(batch, "expired", at)
        elif status == "in_progress":
            self._run_batch_requests(batch, batch.requests)
            obj.update(status="finalizing", finalizing_at=at)
        elif status == "finalizing":
            self._end_batch(batch, "completed", at)

    def _run_batch_requests(self, batch: _FakeBatch, requests: list[dict[str, Any]]) -> None:
        """Answer requests of a batch as /v1/chat/completions would, logging each as a call."""
        for request in requests:
            custom_id, body = request["custom_id"], request["body"]
            received_at = time.time()
            raw_messages = body.get("messages")
            messages = [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
            text = _text(_last_user_message(messages))
            if not isinstance(raw_messages, list):
                status, payload = 400, _invalid_request(
                    "body must be a JSON object with 'messages'", "messages")
            elif (refusal := _refusal(body, messages, self.extra_models)) is not None:
                status, payload = refusal
            else:
                step = self.pick_step(text) or {}
                if "status" in step:
                    status = int(step["status"])
                    payload = step.get("body", _error_body(status))
                elif step.get("malformed") or step.get("disconnect"):
                    status, payload = 500, _error_body(500)  # what a broken answer becomes in a batch
                else:
                    status, payload = 200, self.completion_payload(body, messages, step)
            batch.answers[custom_id] = {
                "id": _new_id("batch_req_"), "custom_id": custom_id,
                "response": {"status_code": status, "request_id": _new_id("req_"), "body": payload},
                "error": None,
            }
            self.calls.append({"text": text, "kind": "batch", "received_at": received_at,
                               "answered_at": time.time(), "batch_id": batch.obj["id"],
                               "custom_id": custom_id, "status": status})
            counts = batch.obj["request_counts"]
            counts["completed" if status == 200 else "failed"] += 1

    def _end_batch(self, batch: _FakeBatch, status: str, at: int) -> None:
        """End a batch: its output and error files, counts, status and timestamp."""
        output: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for request in batch.requests:
            line = batch.answers.get(request["custom_id"])
            if line is None:
                code, message = _UNANSWERED.get(status, _UNANSWERED["expired"])
                line = {"id": _new_id("batch_req_"), "custom_id": request["custom_id"],
                        "response": None, "error": {"code": code, "message": message}}
                batch.answers[request["custom_id"]] = line
            ok = line["response"] is not None and line["response"]["status_code"] == 200
            (output if ok else failures).append(line)
        batch_id = batch.obj["id"]
        for lines, key, suffix in ((output, "output_file_id", "output"), (failures, "error_file_id", "error")):
            if lines:
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                batch.obj[key] = self.add_file(f"{batch_id}_{suffix}.jsonl", "batch_output", content)["id"]
        batch.obj["request_counts"] = {"total": len(batch.requests), "completed": len(output),
                                       "failed": len(failures)}
        batch.obj.update({"status": status, f"{status}_at": at})


def build_app(state: FakeOpenAIState) -> "web.Application":
    """Return the aiohttp application serving the fake API for ``state``."""
    from aiohttp import web

    async def send(request: web.Request, response: web.StreamResponse,
                   call: dict[str, Any]) -> web.StreamResponse:
        """Write ``response`` now, so the call log knows whether and when it went out."""
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            # The client has gone (it timed out): nobody received this answer.  aiohttp
            # ignores the already-failed response it gets back, without logging.
            if call["kind"] == "ok":
                call["kind"] = "timeout"
            return response
        call["answered_at"] = time.time()
        return response

    def disconnect(request: web.Request) -> None:
        """Drop the TCP connection without writing a response."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()

    def malformed() -> web.Response:
        return web.Response(status=200, text='{"id": "chatcmpl-broken", "choices": [',
                            content_type="application/json")

    def completion(body: dict[str, Any], messages: list[dict[str, Any]], step: dict[str, Any],
                   received_at: float) -> web.Response:
        """A normal answer in OpenAI's format (the step's reply, or the echo)."""
        payload = state.completion_payload(body, messages, step)
        state.timings.append((_text(_last_user_message(messages)), received_at, time.time()))
        return web.json_response(payload, headers={
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-remaining-tokens": "999999",
            **step.get("headers", {}),
        })

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        received_at = time.time()
        try:
            body = await request.json()
        except ValueError:
            body = None
        # As the real API: a key it does not accept is refused before anything else.
        authorization = request.headers.get("Authorization")
        if not state.accepts(authorization):
            state.requests.append(body)
            messages = body.get("messages") if isinstance(body, dict) else None
            text = _text(_last_user_message(
                [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
            ))
            call = state.record(text, "unauthorized", received_at)
            return await send(request, web.json_response(
                _unauthorized_body(authorization), status=401), call)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            state.requests.append(body)
            call = state.record("", "invalid", received_at)
            return await send(request, web.json_response(
                {"error": {"message": "body must be a JSON object with 'messages'",
                           "type": "invalid_request_error", "param": "messages", "code": None}},
                status=400,
            ), call)
        state.requests.append(body)
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        text = _text(_last_user_message(messages))

        # An outage beats everything, and answers at once: the region is down.
        if state.in_outage() and state.outage_model in (None, body.get("model")):
            status = state.outage_status
            call = state.record(text, "outage", received_at)
            return await send(request, web.json_response(
                _outage_body(status, state.outage_code), status=status), call)

        # A model not served, or a call its model cannot take, is refused at once,
        # before any step or chaos.
        refusal = _refusal(body, messages, state.extra_models)
        if refusal is not None:
            call = state.record(text, "invalid", received_at)
            return await send(request, web.json_response(refusal[1], status=refusal[0]), call)

        step = state.pick_step(text)
        if step is not None:
            faulty = bool(step.get("disconnect") or "status" in step or step.get("malformed"))
            call = state.record(text, "scripted" if faulty else "ok", received_at)
            # Global latency plus any per-step delay; asyncio.sleep keeps thousands of waits cheap.
            delay = state.latency + float(step.get("delay", 0))
            if delay > 0:
                await asyncio.sleep(delay)
            if step.get("disconnect"):
                disconnect(request)
            if "status" in step:
                status = int(step["status"])
                return await send(request, web.json_response(
                    step.get("body", _error_body(status)), status=status, headers=step.get("headers"),
                ), call)
            if step.get("malformed"):
                return await send(request, malformed(), call)
            return await send(request, completion(body, messages, step, received_at), call)

        chaos = state.chaos
        fault = chaos.draw() if chaos is not None else None
        call = state.record(text, fault or "ok", received_at)
        delay = state.latency
        if fault == "timeout":
            assert chaos is not None
            delay += chaos.timeout_delay
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "429":
            assert chaos is not None
            return await send(request, web.json_response(
                _error_body(429), status=429, headers=_retry_after_headers(chaos.retry_after_seconds()),
            ), call)
        if fault in ("500", "503"):
            status = int(fault)
            return await send(request, web.json_response(_error_body(status), status=status), call)
        if fault == "disconnect":
            disconnect(request)
        if fault == "malformed":
            return await send(request, malformed(), call)
        return await send(request, completion(body, messages, {}, received_at), call)

    # -- files and batches ----------------------------------------------------

    def refused(request: web.Request) -> web.Response | None:
        """OpenAI's 401 for a key not accepted; None when the request may be served."""
        authorization = request.headers.get("Authorization")
        if state.accepts(authorization):
            return None
        return web.json_response(_unauthorized_body(authorization), status=401)

    def bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
        return web.json_response(_invalid_request(message, param, code), status=400)

    def not_found(what: str, ident: str) -> web.Response:
        return web.json_response(_invalid_request(f"No such {what}: '{ident}'.", "id"), status=404)

    def model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}

    async def list_models(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        served = sorted({*MODEL_LIMITS, *state.extra_models})
        return web.json_response({"object": "list", "data": [model_object(m) for m in served]})

    async def retrieve_model(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        model = request.match_info["model"]
        unknown = _unknown_model({"model": model}, state.extra_models)
        if unknown is not None:
            return web.json_response(unknown, status=404)
        return web.json_response(model_object(model))

    async def upload_file(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            form = await request.post()
        except ValueError:
            return bad_request("The body must be multipart/form-data.")
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            return bad_request("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        if purpose not in _FILE_PURPOSES:
            return bad_request(f"Invalid value for 'purpose': {purpose!r}.", "purpose", "invalid_value")
        content = upload.file.read()
        return web.json_response(state.add_file(upload.filename or "upload", str(purpose), content))

    async def get_file(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        file_id = request.match_info["file_id"]
        if file_id not in state.files:
            return not_found("File object", file_id)
        return web.json_response(state.files[file_id][0])

    async def delete_file(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        file_id = request.match_info["file_id"]
        if state.files.pop(file_id, None) is None:
            return not_found("File object", file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def get_file_content(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        file_id = request.match_info["file_id"]
        if file_id not in state.files:
            return not_found("File object", file_id)
        return web.Response(body=state.files[file_id][1], content_type="application/octet-stream")

    async def drive(batch: _FakeBatch) -> None:
        """Move a batch on at each of its moments, so it ends (and its calls are logged)
        even when nobody asks."""
        while (moment := batch.next_change()) is not None:
            await asyncio.sleep(max(moment - time.monotonic(), 0.0))
            if state.batches.get(batch.obj["id"]) is not batch:
                return  # reset meanwhile
            state.advance_batch(batch)

    async def create_batch(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return bad_request("The body must be a JSON object.")
        input_file_id = payload.get("input_file_id")
        metadata = payload.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            return bad_request("Missing required parameter: 'input_file_id'.", "input_file_id",
                               "missing_required_parameter")
        if payload.get("endpoint") != _BATCH_ENDPOINT:
            return bad_request(f"Invalid value for 'endpoint': the fake runs only {_BATCH_ENDPOINT} "
                               "batches.", "endpoint", "invalid_value")
        if payload.get("completion_window") != "24h":
            return bad_request("Invalid value for 'completion_window': only '24h' is supported.",
                               "completion_window", "invalid_value")
        if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= 16
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            return bad_request("Invalid 'metadata': at most 16 string keys and values.", "metadata",
                               "invalid_value")
        stored = state.files.get(input_file_id)
        if stored is None:
            return bad_request(f"Invalid 'input_file_id': '{input_file_id}'. File not found.",
                               "input_file_id", "invalid_value")
        if stored[0]["purpose"] != "batch":
            return bad_request("The input file must be uploaded with purpose 'batch'.",
                               "input_file_id", "invalid_value")
        batch = state.create_batch(input_file_id, stored[1], "24h", metadata)
        task = asyncio.get_running_loop().create_task(drive(batch))
        state.batch_tasks.add(task)
        task.add_done_callback(state.batch_tasks.discard)
        return web.json_response(batch.obj)

    def known_batch(request: web.Request) -> _FakeBatch | None:
        batch = state.batches.get(request.match_info["batch_id"])
        if batch is not None:
            state.advance_batch(batch)
        return batch

    async def get_batch(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if (batch := known_batch(request)) is None:
            return not_found("batch", request.match_info["batch_id"])
        return web.json_response(batch.obj)

    async def cancel_batch(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if (batch := known_batch(request)) is None:
            return not_found("batch", request.match_info["batch_id"])
        status = batch.obj["status"]
        if status in _BATCH_ENDED or status == "cancelling":
            return web.json_response(_invalid_request(
                f"Cannot cancel a batch with status '{status}'.", None, "invalid_state"), status=409)
        state.cancel_batch(batch)
        return web.json_response(batch.obj)

    async def list_batches(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            limit = min(max(int(request.query.get("limit", 20)), 1), 100)
        except ValueError:
            return bad_request("Invalid value for 'limit'.", "limit", "invalid_value")
        newest_first = list(reversed(state.batches.values()))
        after = request.query.get("after")
        if after:
            ids = [b.obj["id"] for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = newest_first[:limit]
        for batch in page:
            state.advance_batch(batch)
        data = [batch.obj for batch in page]
        return web.json_response({
            "object": "list", "data": data,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
            "has_more": len(newest_first) > limit,
        })

    async def control_batch_settings(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            settings = dict(state.batch_settings)
            if "delay" in payload:
                settings["delay"] = float(payload["delay"])
            if "outcome" in payload:
                settings["outcome"] = str(payload["outcome"])
            if "answered" in payload:
                settings["answered"] = int(payload["answered"])
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad batch settings: {exc}"}, status=400)
        if settings["outcome"] not in BATCH_OUTCOMES or settings["delay"] < 0 or settings["answered"] < 0:
            return web.json_response({"error": f"expected outcome in {list(BATCH_OUTCOMES)}, "
                                               "delay >= 0 and answered >= 0"}, status=400)
        state.batch_settings = settings
        return web.json_response(settings)

    async def control_batches(request: web.Request) -> web.Response:
        for batch in state.batches.values():
            state.advance_batch(batch)
        return web.json_response([batch.describe() for batch in state.batches.values()])

    async def control_script(request: web.Request) -> web.Response:
        steps = await request.json()
        if isinstance(steps, dict):
            steps = [steps]
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            return web.json_response({"error": "expected a JSON list of step objects"}, status=400)
        state.steps.extend(steps)
        return web.json_response({"queued": len(state.steps)})

    async def control_requests(request: web.Request) -> web.Response:
        return web.json_response(state.requests)

    async def control_timings(request: web.Request) -> web.Response:
        return web.json_response(state.timings)

    async def control_calls(request: web.Request) -> web.Response:
        return web.json_response(state.calls)

    async def control_faults(request: web.Request) -> web.Response:
        return web.json_response(state.faults())

    async def control_chaos(request: web.Request) -> web.Response:
        try:
            chaos = _parse_chaos(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad chaos settings: {exc}"}, status=400)
        state.chaos = chaos
        return web.json_response({"chaos": chaos.describe() if chaos is not None else None})

    async def control_outage(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            seconds = float(payload["seconds"])
            status = int(payload.get("status", 503))
            code, model = payload.get("code"), payload.get("model")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return web.json_response({"error": f"expected {{'seconds': x, 'status': n}}: {exc}"}, status=400)
        if not 400 <= status <= 599:
            return web.json_response({"error": "status must be an HTTP error (400-599)"}, status=400)
        state.outage_status = status
        state.outage_code = None if code is None else str(code)
        state.outage_model = None if model is None else str(model)
        state.outage_until = time.monotonic() + max(seconds, 0.0)
        return web.json_response({"seconds": max(seconds, 0.0), "status": status})

    async def control_api_keys(request: web.Request) -> web.Response:
        try:
            keys = (await request.json())["keys"]
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": f"expected {{'keys': [..] or null}}: {exc}"}, status=400)
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            return web.json_response({"error": "'keys' must be a list of strings or null"}, status=400)
        state.api_keys = None if keys is None else frozenset(keys)
        # How many, never which: the keys stay out of every answer.
        return web.json_response({"accepted_keys": None if keys is None else len(state.api_keys)})

    async def control_models(request: web.Request) -> web.Response:
        try:
            extra = (await request.json())["extra"]
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": f"expected {{'extra': [..]}}: {exc}"}, status=400)
        if not isinstance(extra, list) or not all(isinstance(m, str) for m in extra):
            return web.json_response({"error": "'extra' must be a list of model names"}, status=400)
        state.extra_models = frozenset(extra)
        return web.json_response({"extra": sorted(state.extra_models)})

    async def control_reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    async def control_latency(request: web.Request) -> web.Response:
        state.latency = float((await request.json())["seconds"])
        return web.json_response({"seconds": state.latency})

    async def control_health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # Image data URLs can be large; the 1 MiB default would reject them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([
        web.post("/v1/chat/completions", chat_completions),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", retrieve_model),
        web.post("/v1/files", upload_file),
        web.get("/v1/files/{file_id}", get_file),
        web.delete("/v1/files/{file_id}", delete_file),
        web.get("/v1/files/{file_id}/content", get_file_content),
        web.post("/v1/batches", create_batch),
        web.get("/v1/batches", list_batches),
        web.get("/v1/batches/{batch_id}", get_batch),
        web.post("/v1/batches/{batch_id}/cancel", cancel_batch),
        web.post("/_control/batches", control_batch_settings),
        web.get("/_control/batches", control_batches),
        web.post("/_control/script", control_script),
        web.get("/_control/requests", control_requests),
        web.get("/_control/timings", control_timings),
        web.get("/_control/calls", control_calls),
        web.get("/_control/faults", control_faults),
        web.post("/_control/chaos", control_chaos),
        web.post("/_control/outage", control_outage),
        web.post("/_control/api_keys", control_api_keys),
        web.post("/_control/models", control_models),
        web.post("/_control/reset", control_reset),
        web.post("/_control/latency", control_latency),
        web.get("/_control/health", control_health),
    ])
    return app


async def serve(port: int, latency: float = 0.0, host: str = _HOST, batch_delay: float = 0.5,
                models: frozenset[str] = frozenset()) -> None:
    """Serve until SIGTERM/SIGINT; prints the ready line once listening."""
    from aiohttp import web

    # Short shutdown_timeout: in-flight (sleeping) requests need no graceful drain in a fake.
    runner = web.AppRunner(build_app(FakeOpenAIState(latency, batch_delay, models)), access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    # A large backlog so bursts of thousands of new connections are not refused.
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    actual_port = runner.addresses[0][1]
    print(f"listening on http://{host}:{actual_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--host", default=_HOST)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    parser.add_argument("--batch-delay", type=float, default=0.5,
                        help="seconds from a batch's creation to its end (default for new batches)")
    parser.add_argument("--model", action="append", default=[], dest="models",
                        help="a model name served beside the known ones (repeatable)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency, args.host, args.batch_delay, frozenset(args.models)))


# ---------------------------------------------------------------------------
# Client-side handle for tests
# ---------------------------------------------------------------------------


class FakeOpenAIServer:
    """Runs the fake server in a subprocess and controls it over HTTP.

    ``base_url`` is what to pass to ``AsyncOpenAI(base_url=...)``.
    """

    def __init__(self, port: int | None = None, *, latency: float = 0.0, batch_delay: float = 0.5,
                 startup_timeout: float = 15.0, models: list[str] | None = None) -> None:
        """Configure the server; ``port=None`` lets the server pick a free one; ``models``:
        names served beside the known ones (kept across resets)."""
        self._models = list(models or [])
        self._requested_port = port or 0
        self._port: int | None = None
        self._latency = latency
        self._batch_delay = batch_delay
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    @property
    def port(self) -> int:
        """TCP port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI API base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{_HOST}:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        """Start the subprocess and wait until it answers the health check."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-openai-"))
        log_path = self._tmpdir / "server.log"
        # Run this very file as a script: works whatever the cwd and whether or not `tests` is a package.
        cmd = [sys.executable, str(Path(__file__).resolve()),
               "--port", str(self._requested_port), "--latency", str(self._latency),
               "--batch-delay", str(self._batch_delay),
               *(arg for model in self._models for arg in ("--model", model))]
        try:
            with open(log_path, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, cwd=self._tmpdir)
            atexit.register(self.stop)
            self._wait_until_ready(log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, log_path: Path) -> None:
        """Wait for the ready line, then for the health endpoint."""
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            output = log_path.read_text(errors="replace")
            if code is not None:
                raise RuntimeError(f"fake OpenAI server exited with code {code}:\n{output[-3000:]}")
            found = _READY_RE.search(output)
            if found:
                self._port = int(found.group(1))
                try:
                    self._call("GET", "/_control/health")
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fake OpenAI server not ready after {self._startup_timeout:.0f}s:\n{output[-3000:]}"
                )
            time.sleep(0.05)

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        """Send a control request and return the decoded JSON answer."""
        conn = http.client.HTTPConnection(_HOST, self.port, timeout=10)
        try:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path} -> {response.status}: {data[:500]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def script(self, steps: list[dict[str, Any]]) -> None:
        """Queue scripted steps (appended after any already queued)."""
        self._call("POST", "/_control/script", list(steps))

    def requests(self) -> list[dict[str, Any]]:
        """Return recorded chat-completion request bodies, in arrival order."""
        return self._call("GET", "/_control/requests")

    def timings(self) -> list[tuple[str, float, float]]:
        """(last user text, received at, answered at) of each completion answered."""
        return [tuple(t) for t in self._call("GET", "/_control/timings")]

    def calls(self) -> list[dict[str, Any]]:
        """The call log: one ``{"text", "kind", "received_at", "answered_at"}`` per completion
        request, and per line a batch answered (kind ``batch``, with ``batch_id``, ``custom_id``
        and ``status``)."""
        return self._call("GET", "/_control/calls")

    def faults(self) -> dict[str, int]:
        """How many calls got each kind of answer other than ``ok`` (and ``batch``)."""
        return self._call("GET", "/_control/faults")

    def chaos(self, rates: dict[str, float] | None, seed: int = 0,
              retry_after: tuple[float, float] = (0.1, 1.0), timeout_delay: float = 5.0) -> None:
        """Inject faults at random: ``rates`` maps a kind (``"429"``, ``"500"``, ``"503"``,
        ``"timeout"``, ``"disconnect"``, ``"malformed"``) to its probability per request.

        None or {} turns chaos off.  ``retry_after`` is the (low, high) range of a 429's
        Retry-After in seconds; a ``timeout`` answers after ``timeout_delay`` seconds.
        """
        self._call("POST", "/_control/chaos", {
            "seed": seed, "rates": {str(k): v for k, v in (rates or {}).items()},
            "retry_after": list(retry_after), "timeout_delay": timeout_delay,
        })

    def outage(self, seconds: float, status: int = 503, code: str | None = None,
               model: str | None = None) -> None:
        """Answer every completion request of the next ``seconds`` with ``status`` (0 ends
        it); ``code``: the error body's code; ``model``: only requests for that model."""
        self._call("POST", "/_control/outage",
                   {"seconds": seconds, "status": status, "code": code, "model": model})

    def accept_api_keys(self, keys: list[str] | None) -> None:
        """Answer only requests bearing one of ``keys`` (others get OpenAI's 401); None: any key."""
        self._call("POST", "/_control/api_keys", {"keys": None if keys is None else list(keys)})

    def serve_models(self, extra: list[str]) -> None:
        """Serve these model names too (until a reset), as plain chat models with no limits."""
        self._call("POST", "/_control/models", {"extra": list(extra)})

    def batch_settings(self, delay: float | None = None, outcome: str | None = None,
                       answered: int | None = None) -> dict[str, Any]:
        """How the batches created from now on behave (only the given settings change):
        ``delay`` seconds from creation to their end, ``outcome`` one of ``"completed"``,
        ``"expired"`` or ``"failed"``, and for an expiring batch how many of its first
        requests are ``answered`` before it expires.  Returns the settings now in force."""
        payload: dict[str, Any] = {}
        if delay is not None:
            payload["delay"] = delay
        if outcome is not None:
            payload["outcome"] = outcome
        if answered is not None:
            payload["answered"] = answered
        return self._call("POST", "/_control/batches", payload)

    def batches(self) -> list[dict[str, Any]]:
        """The batches created, oldest first: ``{"id", "status", "outcome", "delay",
        "input_file_id", "custom_ids", "bodies", "request_counts", "errors"}``."""
        return self._call("GET", "/_control/batches")

    def reset(self) -> None:
        """Clear the script, all logs, files and batches, end chaos and outage, accept any key;
        restore the start latency, extra models and batch settings."""
        self._call("POST", "/_control/reset", {})

    def set_latency(self, seconds: float) -> None:
        """Set the latency added to every completion."""
        self._call("POST", "/_control/latency", {"seconds": seconds})

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); idempotent."""
        from devkit.embedded_broker import stop_process  # only the client half needs it

        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "FakeOpenAIServer":
        """Start the server (context manager entry)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server (context manager exit)."""
        self.stop()


if __name__ == "__main__":
    main()
