"""Dead letters keep the original bytes of a refused record, sealed: they may hold
anything a user wrote, so they are AES-GCM encrypted with a key derived from
SECRET_KEY. `chater-gpt dead-letters` shows them opened, to operators who have it."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The header that says how a dead letter's value is sealed.
SEALED_HEADER = "value_encryption"
SEALED_WITH = b"aes-256-gcm;chater-gpt/dead-letters/v1"
_SALT = b"chater-gpt/dead-letters/v1"


class DeadLetterSeal:
    """Seals with SECRET_KEY; opens with it or, during a rotation, SECRET_KEY_PREVIOUS."""

    def __init__(self, secret_key: str, previous: str | None = None) -> None:
        self._aeads = [_aead(secret_key)] + ([_aead(previous)] if previous else [])

    def seal(self, value: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aeads[0].encrypt(nonce, value, SEALED_WITH)

    def open(self, sealed: bytes) -> bytes:
        """The original bytes; raises cryptography's InvalidTag when no key fits."""
        for aead in self._aeads[:-1]:
            try:
                return aead.decrypt(sealed[:12], sealed[12:], SEALED_WITH)
            except InvalidTag:
                continue
        return self._aeads[-1].decrypt(sealed[:12], sealed[12:], SEALED_WITH)


def _aead(secret_key: str) -> AESGCM:
    return AESGCM(hashlib.pbkdf2_hmac("sha256", secret_key.encode(), _SALT, 100_000))
