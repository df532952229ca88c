"""The published contract (docs/contract/) is what the models the worker uses say, it
is valid JSON Schema and AsyncAPI 3, and what the worker reads and writes fits it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from application.contract import (
    ERROR_TYPES,
    ChatResponse,
    InvalidRequest,
    ResponseBody,
    Usage,
    parse_request,
)
from entrypoints.contract_docs import DOCS, documents

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
AT = "2026-12-02T10:00:00.000Z"


def committed(name: str) -> dict:
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def test_the_committed_documents_are_current():
    generated = documents()
    assert sorted(generated) == sorted(p.name for p in DOCS.iterdir())
    for name, text in generated.items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, (
            f"docs/contract/{name} is not current: run python -m entrypoints.contract_docs")


def test_the_asyncapi_document_is_valid_asyncapi_3():
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    document = committed("asyncapi.json")
    assert [error.message for error in validator.iter_errors(document)] == []
    assert set(document["channels"]) == {"gpt-send", "gpt-response", "gpt-send.dlq", "gpt-erase"}
    dead_letter = document["components"]["messages"]["deadLetter"]["headers"]["properties"]
    assert {"error_type", "reason", "source_topic", "source_partition", "source_offset"} <= set(dead_letter)
    # A document the schema refuses: the check can fail.
    broken = {**document, "channels": {"gpt-send": {"address": 7}}}
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("name", ["gpt-send.schema.json", "gpt-response.schema.json",
                                  "gpt-erase.schema.json"])
def test_each_json_schema_is_a_valid_schema(name):
    jsonschema.Draft202012Validator.check_schema(committed(name))


def request_schema() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(committed("gpt-send.schema.json"))


def test_what_the_readme_shows_and_the_parser_takes_fits_the_schema():
    body = {"user_email": "ada@example.com", "message": "Hi", "max_tokens": 100,
            "temperature": 0.2, "priority": 5, "batch": False, "conversation_id": "support",
            "images": ["iVBORw0KGgo="], "extra field": "ignored"}
    assert list(request_schema().iter_errors(body)) == []


@pytest.mark.parametrize("body", [
    {"message": "no address"},
    {"user_email": "ada@example.com", "message": 7},
    {"user_email": "ada@example.com", "message": "x", "max_tokens": 0},
    {"user_email": "ada@example.com", "message": "x", "max_tokens": 2.5},
    {"user_email": "ada@example.com", "message": "x", "temperature": 3},
    {"user_email": "ada@example.com", "message": "x", "priority": 1001},
    {"user_email": "ada@example.com", "message": "x", "batch": "yes"},
    {"user_email": "ada@example.com", "message": "x", "images": "not a list"},
    {"user_email": "ada@example.com", "message": "x", "model": ""},
])
def test_what_the_schema_refuses_the_parser_refuses(body):
    assert list(request_schema().iter_errors(body))
    with pytest.raises(InvalidRequest):
        parse_request(b"r1", json.dumps(body).encode())


def responses() -> list[ChatResponse]:
    answer = dict(text="Hello", model="gpt-4o-mini", usage=Usage(9, 11), cost_usd=7.95e-06,
                  finish_reason="stop", timestamp=AT, processing_time=0.25)
    return [
        ChatResponse.answer(**answer),
        ChatResponse.answer(**{**answer, "cost_usd": None}),  # unpriced
        ChatResponse.answer(**{**answer, "usage": Usage(), "cost_usd": 0.0}, source="cache"),
        ChatResponse.answer(**answer, source="batch"),
        ChatResponse.answer(**answer, withheld=True),
        *(ChatResponse.failure(kind, "why, safely", AT, 0.01) for kind in ERROR_TYPES),
        ChatResponse.rejection("invalid_request", "'message' is required", datetime.now(UTC), 0.0),
    ]


def test_every_response_the_worker_writes_fits_the_model_and_the_schema():
    schema = jsonschema.Draft202012Validator(committed("gpt-response.schema.json"))
    for response in responses():
        value = response.encode()
        ResponseBody.model_validate_json(value)
        assert list(schema.iter_errors(json.loads(value))) == [], value


@pytest.mark.parametrize("value", [
    {"error": {"type": "teapot", "message": "?"}, "timestamp": AT, "processing_time": 0},
    {"response": "x", "model": "m", "timestamp": AT, "processing_time": 0},  # no usage
    {"error": {"type": "internal_error", "message": "?"}, "timestamp": "yesterday",
     "processing_time": 0},
])
def test_a_response_off_the_contract_is_refused(value):
    with pytest.raises(ValidationError):
        ResponseBody.model_validate(value)
    assert list(jsonschema.Draft202012Validator(committed("gpt-response.schema.json")).iter_errors(value))
