"""USER_TOKEN_LIMITS: a JSON or YAML file of users' own daily token limits.

    ada@example.com: 500000
    bob@example.com: 2000000

Addresses are compared as requests' are (case and Unicode normalised); a limit is a
whole number of tokens, more than 0.
"""

from __future__ import annotations

from pathlib import Path

from adapters.settings_file import read_json_or_yaml
from domain.addresses import InvalidAddress, normalise_email


class UserLimitsError(ValueError):
    """The file cannot be used; the message says where and why (never an address)."""


def read_user_limits(path: str | Path) -> dict[str, int]:
    path = Path(path)
    document = read_json_or_yaml(path, UserLimitsError, quote=False)  # it holds addresses
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
