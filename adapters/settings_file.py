"""A settings file in JSON or YAML (MODEL_PRICES, USER_TOKEN_LIMITS): read whole, or
refused with a reason that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_json_or_yaml(path: Path, error: type[ValueError], quote: bool = True) -> Any:
    """The document in the file; `error` (with where and why) when it cannot be read.
    `quote=False` leaves the parser's message out: it may quote a line of the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as failure:
        raise error(f"cannot read {path}: {failure.strerror or failure}") from None
    try:
        return json.loads(text)  # LiteLLM's price table is 1.6 MB: JSON reads it fast
    except ValueError:
        try:
            # YAML is a superset of JSON: one parser reads both.
            return yaml.safe_load(text)
        except yaml.YAMLError as failure:
            why = f": {failure}" if quote else ""
            raise error(f"{path} is neither JSON nor YAML{why}") from None
