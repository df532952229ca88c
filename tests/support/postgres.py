"""Throwaway PostgreSQL server for integration tests.

Creates a fresh cluster with ``initdb`` in a temporary directory, starts it on
a free loopback port with durability switched off (tests do not need it), and
deletes everything on ``stop()``.  Needs the PostgreSQL server binaries
(Debian/Ubuntu: ``apt-get install postgresql``).
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from devkit.embedded_broker import free_loopback_port

_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
# The server refuses to run as root, so as root we run it as this system user
# (created by Debian's postgresql package).
_RUN_AS = "postgres"



def find_postgres_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl``.

    Prefers the highest version under Debian's ``/usr/lib/postgresql/*/bin``
    (those are not on PATH by default), then falls back to PATH.
    """

    def version_key(bindir: str) -> tuple[int, ...]:
        version = Path(bindir).parent.name
        return tuple(int(part) for part in re.findall(r"\d+", version))

    candidates = [
        d
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(os.path.join(d, "initdb"), os.X_OK)
        and os.access(os.path.join(d, "pg_ctl"), os.X_OK)
    ]
    if candidates:
        return Path(max(candidates, key=version_key))
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(pg_ctl).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them, "
        "e.g. `apt-get install -y postgresql` on Debian/Ubuntu"
    )


class PostgresServer:
    """A private PostgreSQL cluster listening on ``127.0.0.1:<port>``.

    Superuser ``postgres``, ``trust`` authentication (no password), UTF8
    encoding, C locale.  ``stop()`` is idempotent and also registered with
    :mod:`atexit` as a safety net.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        bindir: str | os.PathLike[str] | None = None,
        durable: bool = False,
    ) -> None:
        """Configure the server; nothing is created until :meth:`start`."""
        self._port = port if port is not None else free_loopback_port()
        self._bindir = Path(bindir) if bindir is not None else None
        self._tmpdir: Path | None = None
        self._datadir: Path | None = None
        self._running = False
        # Tests trade durability for speed; benchmarks keep PostgreSQL's defaults.
        self._durable = durable

    @property
    def port(self) -> int:
        """TCP port the server listens on."""
        return self._port

    @property
    def host(self) -> str:
        """Host address the server listens on."""
        return _HOST

    @property
    def log_path(self) -> Path | None:
        """Server log file (inside the temporary directory)."""
        return self._tmpdir / "postgres.log" if self._tmpdir else None

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the ``postgres`` user when we are root."""
        assert self._bindir is not None and self._tmpdir is not None
        cmd = [str(self._bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", _RUN_AS, "--", *cmd]
        # cwd: the postgres user may not be allowed into the caller's cwd (e.g. root's home).
        return subprocess.run(
            cmd, cwd=self._tmpdir, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )

    def start(self) -> "PostgresServer":
        """Create a fresh cluster and start the server; returns once it accepts connections."""
        if self._running:
            return self
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self._datadir = self._tmpdir / "data"
        try:
            if os.geteuid() == 0:
                self._hand_tmpdir_to_postgres_user()
            init = self._run(
                "initdb", "-D", str(self._datadir), "-A", "trust", "-U", _SUPERUSER,
                "--no-sync", "--encoding=UTF8", "--locale=C",
            )
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
            self._running = True  # from here on stop() must try pg_ctl stop
            atexit.register(self.stop)
            self._pg_start()
        except BaseException:
            self.stop()
            raise
        return self

    def _pg_start(self) -> None:
        # The socket goes in the data dir: the default /var/run/postgresql may not exist or be writable.
        options = (
            f"-p {self._port} -k {shlex.quote(str(self._datadir))} "
            f"-c listen_addresses={_HOST} "
            + ("" if self._durable else
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        )
        started = self._run(
            "pg_ctl", "-D", str(self._datadir), "-o", options, "-w", "-t", "30",
            "-l", str(self.log_path), "start",
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}\n"
                f"log tail:\n{self._log_tail()}"
            )

    def restart(self, down_for: float = 1.0) -> None:
        """Stop the server (its data kept), stay down a while, start it again: an outage."""
        self.stop_server()
        time.sleep(down_for)
        self.start_server()

    def stop_server(self) -> None:
        """Stop the server process, keeping its data, until :meth:`start_server`."""
        self._run("pg_ctl", "-D", str(self._datadir), "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        """Start the server stopped by :meth:`stop_server` again."""
        self._pg_start()

    def _hand_tmpdir_to_postgres_user(self) -> None:
        """Give the temporary directory to the ``postgres`` user (root only)."""
        import pwd

        try:
            user = pwd.getpwnam(_RUN_AS)
        except KeyError:
            raise RuntimeError(
                f"running as root but there is no '{_RUN_AS}' system user to run PostgreSQL as; "
                "install the `postgresql` package (it creates the user)"
            ) from None
        assert self._tmpdir is not None
        os.chown(self._tmpdir, user.pw_uid, user.pw_gid)

    def _log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the server log ('' if unreadable)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        """Stop the server immediately and delete its files; idempotent."""
        if self._running:
            self._running = False
            # Immediate mode: no checkpoint, the data is thrown away anyway.
            self._run("pg_ctl", "-D", str(self._datadir), "-m", "immediate", "-w", "stop")
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._datadir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "PostgresServer":
        """Start the server (context manager entry)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server (context manager exit)."""
        self.stop()

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq key/value connection string for ``dbname``."""
        return psycopg.conninfo.make_conninfo(
            host=_HOST, port=self._port, user=_SUPERUSER, dbname=dbname
        )

    def url(self, dbname: str = "postgres") -> str:
        """Return a ``postgresql://`` URL for ``dbname``."""
        return f"postgresql://{_SUPERUSER}@{_HOST}:{self._port}/{dbname}"

    def env(self, dbname: str) -> dict[str, str]:
        """Return the environment variables that point ``eventsourcing`` at ``dbname``."""
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": _HOST,
            "POSTGRES_PORT": str(self._port),
            "POSTGRES_USER": _SUPERUSER,
            "POSTGRES_PASSWORD": "",
        }

    def create_database(self, name: str) -> None:
        """Create database ``name`` (CREATE DATABASE cannot run in a transaction, hence autocommit)."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
