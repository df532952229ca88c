"""USER_TOKEN_LIMITS: a JSON or YAML file of users' own daily token limits.

    ada@example.com: 500000
    bob@example.com: 2000000

Addresses are compared as requests' are (case and Unicode normalised); a limit is a
whole number of tokens, more than 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from domain.addresses import InvalidAddress, normalise_email


class UserLimitsError(ValueError):
    """The file cannot be used; the message says where and why (never an address)."""


def read_user_limits(path: str | Path) -> dict[str, int]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserLimitsError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserLimitsError(f"{path} is neither JSON nor YAML") from None
    if not isinstance(document, dict):
        raise UserLimitsError(f"{path} must map e-mail addresses to daily tokens")
    limits: dict[str, int] = {}
    for number, (address, tokens) in enumerate(document.items(), 1):
        try:
            normalised = normalise_email(str(address))
        except InvalidAddress:
            raise UserLimitsError(f"{path}: entry {number} is not an e-mail address") from None
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise UserLimitsError(
                f"{path}: entry {number}: the limit must be a whole number of tokens above 0"
            )
        limits[normalised] = tokens
    return limits
