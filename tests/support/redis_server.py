"""Throwaway Redis server for integration tests.

Runs the ``redis-server`` binary on a free loopback port with persistence off
and its working directory in a temporary folder that ``stop()`` deletes. Two
kinds of outage can be staged on the same port:

* ``stop_for_outage()`` / ``restart()``: the process is gone, connections are
  refused (the data is lost, as with a real restart without persistence);
* ``hang()`` / ``unhang()``: the process is frozen with SIGSTOP, so the kernel
  still accepts connections but nothing is ever answered (a hung server).

Needs the ``redis-server`` binary (``scripts/setup.sh --test`` installs it).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from devkit.embedded_broker import free_loopback_port, stop_process

_HOST = "127.0.0.1"


class RedisServer:
    """A private ``redis-server`` listening on ``127.0.0.1:<port>``; ``stop()`` is idempotent."""

    def __init__(self, port: int | None = None) -> None:
        self._port = port if port is not None else free_loopback_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._hung = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self._port}/0"

    @property
    def log_path(self) -> Path | None:
        return self._tmpdir / "redis.log" if self._tmpdir else None

    def start(self) -> Self:
        """Start the server; returns once it answers PING."""
        if self._process is not None:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH; run scripts/setup.sh --test")
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="redistest-"))
            atexit.register(self.stop)
        try:
            self._process = subprocess.Popen(
                [
                    binary,
                    "--bind", _HOST,
                    "--port", str(self._port),
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self._tmpdir),
                    "--logfile", str(self.log_path),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout: float = 10.0) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode}:\n{self._log_tail()}"
                )
            if self.answers_ping():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not answer PING in {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.01)

    def answers_ping(self, timeout: float = 0.2) -> bool:
        """Whether the server answers PING right now."""
        try:
            with socket.create_connection((_HOST, self._port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            assert self.log_path is not None
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def _kill(self) -> None:
        """End the process (thawing it first if it is frozen)."""
        process, self._process = self._process, None
        if process is None:
            return
        if self._hung and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        self._hung = False
        stop_process(process, grace=2.0)

    def stop_for_outage(self) -> None:
        """Stop the process (connections are refused) until :meth:`restart`."""
        self._kill()

    def restart(self) -> None:
        """Start the server again on the same port after :meth:`stop_for_outage`."""
        self.start()

    def hang(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted but never answered."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)
        self._hung = True

    def unhang(self) -> None:
        """Let a process frozen by :meth:`hang` go on (SIGCONT)."""
        if self._process is not None and self._hung:
            self._process.send_signal(signal.SIGCONT)
        self._hung = False

    def stop(self) -> None:
        """Kill the server and delete its files; idempotent."""
        try:
            self._kill()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
