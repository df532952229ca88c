"""The response cache in Redis, unreadable to whoever reads Redis, and never in the way.

What is kept is a user's reply, so neither a key nor a value reveals anything:

* the key is ``{prefix}:{scope tag}:{entry tag}``, both tags HMAC-SHA256s under
  SECRET_KEY (of the scope, and of the call's digest), so a key says neither whose
  it is nor what was asked, yet all of a scope's keys can be found to forget them;
* the value is the reply as JSON, sealed with AES-GCM under a key derived from
  SECRET_KEY *and* the digest: only a process holding the secret that is making
  the very same call can read it. A value that does not open is a miss (and dropped).

An outage of Redis is a miss, never an error: every failure (refused, timed out,
any Redis error) is swallowed, logged once per outage, and opens a simple breaker
that skips Redis for `retry_after` seconds, so that a hung Redis does not add a
timeout to every request; the first call after that tries Redis again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from application.ports import ModelReply

logger = logging.getLogger(__name__)

# Every field of ModelReply but rate_limits (what the provider said then, not the reply).
_FIELDS = ("text", "model", "prompt_tokens", "completion_tokens", "finish_reason", "cached_tokens")
_NONCE = 12
_BATCH = 500
_POOL_SIZE = 64
_FAILURES = (RedisError, OSError)  # OSError covers ConnectionError and TimeoutError


class RedisResponseCache:
    """A `ResponseCache` in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        secret_key: str,
        prefix: str = "chater-gpt:cache",
        socket_timeout: float = 0.25,
        retry_after: float = 5.0,
    ) -> None:
        if not secret_key:
            raise ValueError("the response cache needs a SECRET_KEY")
        self._secret = secret_key.encode()
        self._prefix = prefix
        self._retry_after = retry_after
        # A bounded pool that callers queue for (briefly): the default one fails calls
        # beyond its size, which a burst of requests must not turn into an "outage".
        # The wait for a free connection is longer than a call's timeouts: a burst
        # queueing behind a busy pool is not an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=_POOL_SIZE,
            timeout=max(4 * socket_timeout, 1.0),
            socket_connect_timeout=socket_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),  # the breaker decides when to try again
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._down = False  # in an outage (logged once)
        self._skip_until = 0.0  # monotonic time before which Redis is not tried

    # -- keys and values --------------------------------------------------------

    def _mac(self, label: str, data: str) -> bytes:
        return hmac.new(self._secret, (label + data).encode(), hashlib.sha256).digest()

    def _scope_tag(self, scope: str) -> str:
        return f"{self._prefix}:{self._mac('scope', scope).hex()[:32]}"

    def _key(self, scope: str, digest: str) -> str:
        return f"{self._scope_tag(scope)}:{self._mac('entry', digest).hex()}"

    def _seal(self, key: str, digest: str, reply: ModelReply) -> bytes:
        data = json.dumps({name: getattr(reply, name) for name in _FIELDS}).encode()
        nonce = os.urandom(_NONCE)
        return nonce + AESGCM(self._mac("value", digest)).encrypt(nonce, data, key.encode())

    def _open(self, key: str, digest: str, value: bytes) -> ModelReply | None:
        try:
            data = AESGCM(self._mac("value", digest)).decrypt(
                value[:_NONCE], value[_NONCE:], key.encode()
            )
            fields = json.loads(data)
            reply = ModelReply(**{name: fields[name] for name in _FIELDS})
        except (InvalidTag, ValueError, KeyError, TypeError):
            return None
        return reply

    # -- the breaker --------------------------------------------------------------

    def _closed(self) -> bool:
        """Whether Redis may be tried now; after an outage one caller probes per window."""
        if not self._down:
            return True
        now = time.monotonic()
        if now < self._skip_until:
            return False
        self._skip_until = now + self._retry_after  # the others keep skipping meanwhile
        return True

    def _failed(self, error: BaseException) -> None:
        self._skip_until = time.monotonic() + self._retry_after
        if not self._down:
            self._down = True
            logger.warning(
                "response cache unavailable, answering without it for now: %s: %s",
                type(error).__name__, error,
            )

    def _worked(self) -> None:
        if self._down:
            self._down = False
            logger.info("response cache available again")

    # -- the port -------------------------------------------------------------------

    async def get(self, scope: str, digest: str) -> ModelReply | None:
        if not self._closed():
            return None
        key = self._key(scope, digest)
        try:
            value = await self._redis.get(key)
            reply = None if value is None else self._open(key, digest, value)
            if value is not None and reply is None:
                await self._redis.unlink(key)  # unreadable: drop it
        except _FAILURES as error:
            self._failed(error)
            return None
        self._worked()
        return reply

    async def put(self, scope: str, digest: str, reply: ModelReply, ttl: float) -> None:
        if not self._closed():
            return
        key = self._key(scope, digest)
        try:
            await self._redis.set(key, self._seal(key, digest, reply), px=max(1, round(ttl * 1000)))
        except _FAILURES as error:
            self._failed(error)
            return
        self._worked()

    async def forget(self, scope: str) -> int:
        if not self._closed():
            return 0
        dropped = 0
        try:
            batch: list[bytes] = []
            pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._scope_tag(scope)) + ":*"
            async for key in self._redis.scan_iter(match=pattern, count=_BATCH):
                batch.append(key)
                if len(batch) >= _BATCH:
                    dropped += await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                dropped += await self._redis.unlink(*batch)
        except _FAILURES as error:
            self._failed(error)
            return 0
        self._worked()
        return dropped

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except _FAILURES:
            pass

