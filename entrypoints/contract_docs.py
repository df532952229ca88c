"""The published contract, generated from the pydantic models the worker uses
(application.contract): a JSON Schema of each message body and an AsyncAPI 3
document of the four topics, headers and keys included.

    python -m entrypoints.contract_docs           # write docs/contract/
    python -m entrypoints.contract_docs --check   # exit 1 when they are not current

tests/unit/test_contract_docs.py fails while the committed files differ from what
this writes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from application.contract import ErasureBody, RequestBody, ResponseBody

DOCS = Path(__file__).resolve().parent.parent / "docs" / "contract"
COMPONENTS = "#/components/schemas/{model}"

TRACEPARENT = {
    "type": "string",
    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    "description": "W3C trace context",
}
KAFKA_BINDING_VERSION = "0.5.0"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> the JSON Schema (draft 2020-12) of each message body."""
    return {
        f"{name}.schema.json": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **model.model_json_schema(),
        }
        for name, model in _bodies().items()
    }


def _bodies() -> dict[str, type[BaseModel]]:
    return {"gpt-send": RequestBody, "gpt-response": ResponseBody, "gpt-erase": ErasureBody}


def asyncapi(version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the service's topics (their default names)."""
    schemas: dict[str, Any] = {}

    def payload(model: type[BaseModel]) -> dict[str, Any]:
        schema = copy.deepcopy(model.model_json_schema(ref_template=COMPONENTS))
        schemas.update(schema.pop("$defs", {}))
        return schema

    def key(description: str) -> dict[str, Any]:
        return {"kafka": {"key": {"type": "string", "description": description},
                          "bindingVersion": KAFKA_BINDING_VERSION}}

    def dead_letter_header(description: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": description, **more}

    messages = {
        "chatRequest": {
            "name": "chatRequest", "title": "A chat request", "contentType": "application/json",
            "summary": "A question for the model, in a user's conversation.",
            "headers": {"type": "object", "properties": {"traceparent": {
                **TRACEPARENT, "description": "W3C trace context: the request is traced as "
                "part of that trace"}}},
            "payload": payload(RequestBody),
            "bindings": key("the request id: used exactly as sent, at most MAX_KEY_BYTES, "
                            "printable UTF-8; the response carries it"),
        },
        "chatResponse": {
            "name": "chatResponse", "title": "An answer or an error",
            "contentType": "application/json",
            "summary": "Exactly one per request: the answer, or why there is none.",
            "headers": {"type": "object", "properties": {"traceparent": {
                **TRACEPARENT, "description": "W3C trace context of the worker's span"}}},
            "payload": payload(ResponseBody),
            "bindings": key("the request id of the request answered"),
        },
        "deadLetter": {
            "name": "deadLetter", "title": "A refused record, kept whole",
            "contentType": "application/octet-stream",
            "summary": "An unreadable or invalid record (request or erasure), its original "
                       "bytes sealed with a key derived from SECRET_KEY; `chater-gpt "
                       "dead-letters` prints them opened.",
            "headers": {
                "type": "object",
                "required": ["error_type", "reason", "source_topic", "source_partition",
                             "source_offset"],
                "properties": {
                    "value_encryption": dead_letter_header(
                        "how the value is sealed", const="aes-256-gcm;chater-gpt/dead-letters/v1"),
                    "error_type": dead_letter_header("the error type of its response"),
                    "reason": dead_letter_header("why it was refused; never quotes the record"),
                    "source_topic": dead_letter_header("the topic the platform produced it to"),
                    "source_partition": dead_letter_header("its partition there", pattern="^[0-9]+$"),
                    "source_offset": dead_letter_header("its offset there", pattern="^[0-9]+$"),
                    "value_omitted": dead_letter_header(
                        "present when the value could not be kept (the cluster refused it): "
                        "the refusal's error name"),
                    "value_sha256": dead_letter_header(
                        "with value_omitted: the SHA-256 of the value, hex", pattern="^[0-9a-f]{64}$"),
                },
            },
            "payload": {"type": "string", "format": "binary",
                        "description": "12 bytes of nonce, then the AES-GCM ciphertext and tag of "
                                       "the original value; empty when value_omitted"},
            "bindings": key("the refused record's key, as sent (none when it was the problem)"),
        },
        "erasureRequest": {
            "name": "erasureRequest", "title": "Erase a user", "contentType": "application/json",
            "summary": "Every conversation of the address becomes unreadable for good "
                       "(crypto-shredding); accounting stays.",
            "payload": payload(ErasureBody),
        },
    }
    channels = {
        "gpt-send": ("REQUEST_TOPIC", "Chat requests from the platform's producers, keyed by "
                     "request id (the default partitioner spreads a conversation over "
                     "partitions; the worker orders each conversation's turns itself).",
                     "chatRequest"),
        "gpt-response": ("RESPONSE_TOPIC", "One response per request, under its key.",
                         "chatResponse"),
        "gpt-send.dlq": ("DLQ_TOPIC", "Dead letters: every record refused, whole and sealed.",
                         "deadLetter"),
        "gpt-erase": ("ERASE_TOPIC", "Erasure requests; each is applied or dead-lettered, then "
                      "committed.", "erasureRequest"),
    }
    operations = {
        "receiveChatRequests": ("receive", "gpt-send", "The worker answers each request."),
        "sendChatResponses": ("send", "gpt-response", "The worker produces each response."),
        "sendDeadLetters": ("send", "gpt-send.dlq", "The worker keeps each refused record."),
        "receiveErasures": ("receive", "gpt-erase", "The worker erases each user asked for."),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chater-gpt",
            "version": version,
            "description": "The GPT service of the Chater platform: chat requests in, answers "
                           "out, over Kafka. Topic names are the defaults; each is a setting.",
        },
        "defaultContentType": "application/json",
        "channels": {
            name: {
                "address": name,
                "title": setting,
                "description": f"{description} Its name is the setting {setting}.",
                "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            }
            for name, (setting, description, message) in channels.items()
        },
        "operations": {
            name: {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": summary,
                "messages": [{"$ref": f"#/channels/{channel}/messages/"
                                      f"{channels[channel][2]}"}],
            }
            for name, (action, channel, summary) in operations.items()
        },
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def documents() -> dict[str, str]:
    """File name -> its text, as committed in docs/contract/."""
    from importlib.metadata import version

    files = {name: schema for name, schema in json_schemas().items()}
    files["asyncapi.json"] = asyncapi(version("chater-gpt"))
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when not current")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    stale = []
    for name, text in documents().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"not current: {', '.join(stale)}; run python -m entrypoints.contract_docs",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
