"""Dead letters keep the original bytes of a refused record, sealed: they may hold
anything a user wrote, so they are AES-GCM encrypted with a key derived from
SECRET_KEY. `chater-gpt dead-letters` shows them opened, to operators who have it."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The header that says how a dead letter's value is sealed.
SEALED_HEADER = "value_encryption"
SEALED_WITH = b"aes-256-gcm;chater-gpt/dead-letters/v1"
_SALT = b"chater-gpt/dead-letters/v1"


class DeadLetterSeal:
    def __init__(self, secret_key: str) -> None:
        self._aead = AESGCM(hashlib.pbkdf2_hmac("sha256", secret_key.encode(), _SALT, 100_000))

    def seal(self, value: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, value, SEALED_WITH)

    def open(self, sealed: bytes) -> bytes:
        """The original bytes; raises cryptography's InvalidTag with another SECRET_KEY."""
        return self._aead.decrypt(sealed[:12], sealed[12:], SEALED_WITH)
