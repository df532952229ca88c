"""Secrets that live in files and may be replaced while the service runs.

Kubernetes mounts a Secret as a directory of symlinks and updates it atomically:
the new files go into a fresh timestamped directory, the `..data` symlink is
swapped to it, and the old directory is removed. The path we were given keeps
resolving, to a new inode. So a cheap `stat` of the resolved path (inode, size,
mtime) says whether the content may have changed, and only then is it read.

A secret's value never appears in a message, a log line or a repr here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the file, never its content."""


def read_secret_file(path: str) -> str:
    """The secret in the file, surrounding whitespace (a trailing newline) removed."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise SecretFileError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text") from None
    if not secret:
        raise SecretFileError(f"{path} is empty")
    return secret


_Signature = tuple[int, int, int, int]


def _signature(path: str) -> _Signature:
    """What changes when the file is rewritten or its symlink swapped; os.stat follows links."""
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class StaticSecret:
    """A secret given once (an environment variable): it never changes."""

    def __init__(self, value: str) -> None:
        self._value = value

    def current(self) -> str:
        return self._value

    def reread(self) -> bool:
        """Nothing to read again: never changed."""
        return False

    def __repr__(self) -> str:
        return "StaticSecret(<hidden>)"


class SecretFile:
    """A secret read from a file and read again when the file changes.

    `current()` is called before every use: at most once per `check_interval`
    seconds it stats the file, and reads it only when the stat differs. A file
    that became unreadable or empty keeps the last good secret (with a warning):
    a broken mount should not take a working key away.
    """

    def __init__(
        self,
        path: str,
        name: str = "secret file",
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = str(path)
        self.name = name
        self.check_interval = check_interval
        self._clock = clock
        # stat before read: a change in between makes the next check read again, never miss it.
        self._signature: _Signature | None = self._stat()
        self._value = read_secret_file(self.path)
        self._checked_at = clock()
        self._broken = False

    def current(self) -> str:
        """The secret, read again first if the file has changed since the last look."""
        now = self._clock()
        if now - self._checked_at >= self.check_interval:
            self._checked_at = now
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self._load()
        return self._value

    def reread(self) -> bool:
        """Read the file now, whatever its stat says; True if the secret changed."""
        self._checked_at = self._clock()
        self._signature = self._stat()
        return self._load()

    def _stat(self) -> _Signature | None:
        try:
            return _signature(self.path)
        except OSError:
            return None  # reading it will say what is wrong

    def _load(self) -> bool:
        try:
            value = read_secret_file(self.path)
        except SecretFileError as error:
            if not self._broken:
                log.warning("%s: %s; still using the secret read before", self.name, error)
            self._broken = True
            return False
        self._broken = False
        if value == self._value:
            return False
        self._value = value
        log.info("%s: %s has a new secret; using it from now on", self.name, self.path)
        return True

    def __repr__(self) -> str:
        return f"SecretFile({self.path!r}, <hidden>)"


def api_key_source(
    key: str | None, path: str | None, check_interval: float = 1.0
) -> StaticSecret | SecretFile:
    """OPENAI_API_KEY_FILE when it is set (re-read on change), else OPENAI_API_KEY."""
    if path:
        if key:
            log.warning("OPENAI_API_KEY_FILE and OPENAI_API_KEY are both set: the file wins")
        return SecretFile(path, name="OPENAI_API_KEY_FILE", check_interval=check_interval)
    if not key:
        raise ValueError("OPENAI_API_KEY is not set")
    return StaticSecret(key)
