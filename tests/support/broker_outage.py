"""Broker outages for tests, without losing the broker's data.

Tansu runs with in-memory storage, so restarting its process would lose every
topic and offset.  Instead, clients reach the broker through :class:`TcpProxy`
and a test *cuts* the proxy: open connections are reset and new connects are
refused, which is what a client sees while a broker crashes and restarts.  ``restore()``
listens again on the same port and the clients are expected to reconnect by
themselves.

:class:`ProxiedBroker` is an :class:`~devkit.embedded_broker.EmbeddedBroker`
that advertises the proxy's port in its metadata, so clients keep going
through the proxy after their bootstrap connection::

    with ProxiedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap_server})
        ...
        broker.outage(2.0)  # cut, wait 2 s, restore

Standard library only (plus the dev kit's embedded broker).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from devkit.embedded_broker import EmbeddedBroker

_LOOPBACK = "127.0.0.1"
_CHUNK = 256 * 1024
# Linger on, timeout 0: close() sends RST instead of FIN, like a crashed peer.
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Connection:
    """One proxied client connection and its upstream half."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.aborted = False

    def abort(self) -> None:
        """Reset both sides at once; pending data is dropped, not flushed."""
        self.aborted = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()


class TcpProxy:
    """TCP forwarder ``127.0.0.1:<listen_port>`` -> ``127.0.0.1:<target_port>`` that can be cut.

    Runs an asyncio loop in a daemon thread; every public method may be called
    from any other thread and returns once the loop has done the work.

    ``accepted`` counts connections accepted, ``aborted`` connections reset by
    a cut and ``cuts`` the cuts (read them at any time, for assertions).
    """

    def __init__(self, target_port: int, listen_port: int = 0, *, timeout: float = 10.0) -> None:
        """Configure the proxy; ``listen_port=0`` lets the OS pick one at :meth:`start`."""
        self.target_port = target_port
        self._listen_port = listen_port
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.aborted = 0
        self.cuts = 0

    @property
    def listen_port(self) -> int:
        """Port clients connect to (known once started, or if given explicitly)."""
        return self._listen_port

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{_LOOPBACK}:{self._listen_port}"

    @property
    def is_cut(self) -> bool:
        """True while the proxy is started but not listening."""
        return self._loop is not None and self._server is None

    @property
    def open_connections(self) -> int:
        """Connections currently being forwarded."""
        return len(self._connections)

    # -- public, thread-safe -------------------------------------------------

    def start(self) -> "TcpProxy":
        """Start the loop thread and listen; returns self."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        atexit.register(self.stop)
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            atexit.unregister(self.stop)

    def cut(self) -> None:
        """Stop listening (connects are refused) and reset every open connection."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port; a no-op if not cut."""
        self._call(self._listen())

    def outage(self, seconds: float) -> None:
        """Cut, stay down for ``seconds``, restore (also if interrupted)."""
        with self.down():
            time.sleep(seconds)

    @contextlib.contextmanager
    def down(self) -> Iterator["TcpProxy"]:
        """Cut on entry, restore on exit: ``with proxy.down(): ...``."""
        self.cut()
        try:
            yield self
        finally:
            self.restore()

    def __enter__(self) -> "TcpProxy":
        """Start the proxy (context manager entry)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the proxy (context manager exit)."""
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine on the proxy loop and wait for it (errors propagate)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy is not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout)

    # -- event loop side -----------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle,
            _LOOPBACK,
            self._listen_port,
            reuse_address=True,  # rebind at once although old sockets linger
            backlog=128,
            limit=_CHUNK,
        )
        self._listen_port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        self.cuts += 1
        await self._close_listener()
        connections = list(self._connections)
        self._connections.clear()
        for conn in connections:
            conn.abort()
        self.aborted += len(connections)

    async def _shutdown(self) -> None:
        await self._close_listener()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        # Aborted connections make the handlers return by themselves;
        # cancelling is only the fallback for one that would hang.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # close() shuts the listening socket now; wait_closed() may wait
            # for live connections on Python 3.12+, so it is not awaited.
            server.close()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        conn = _Connection(client_writer)
        self.accepted += 1
        if self._server is None:
            # Accepted just before a cut but handled after it: must not survive it.
            self.aborted += 1
            conn.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections.add(conn)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    _LOOPBACK, self.target_port, limit=_CHUNK
                )
            except OSError:
                conn.abort()  # broker down: the client sees a reset
                return
            conn.upstream = upstream_writer
            if conn.aborted:  # cut while we were connecting upstream
                conn.abort()
                return
            pumps = [
                asyncio.create_task(_pump(client_reader, upstream_writer)),
                asyncio.create_task(_pump(upstream_reader, client_writer)),
            ]
            try:
                # Kafka does not half-close: the first side to finish ends the pair.
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                conn.abort()  # pass a reset on as a reset
            else:
                for writer in (client_writer, upstream_writer):
                    writer.close()  # flushes what is still buffered
        except (asyncio.CancelledError, Exception):
            # Not re-raised: this task is top-level, and on Python 3.11 asyncio
            # logs a spurious traceback for a cancelled connection handler.
            conn.abort()
        finally:
            self._connections.discard(conn)
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, with back-pressure (``drain``)."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


class ProxiedBroker(EmbeddedBroker):
    """An in-memory Tansu broker that clients reach only through a cuttable :class:`TcpProxy`.

    Tansu listens on :attr:`port` but advertises the proxy's port, so clients
    that follow metadata (every Kafka client does) stay behind the proxy.
    :attr:`bootstrap_server` is the proxy's address.
    """

    def __init__(self, port: int | None = None, *, proxy_port: int = 0, **kwargs) -> None:
        """Configure broker and proxy; ``proxy_port=0`` lets the OS pick it at start."""
        super().__init__(port, **kwargs)
        self.proxy = TcpProxy(self.port, proxy_port)

    @property
    def bootstrap_server(self) -> str:
        """Value for ``bootstrap.servers``: the proxy, never the broker itself."""
        return self.proxy.address

    @property
    def broker_address(self) -> str:
        """The broker's own ``host:port`` (clients bootstrapped here still move to the proxy)."""
        return f"{_LOOPBACK}:{self.port}"

    def start(self) -> "ProxiedBroker":
        """Start the proxy, then Tansu advertising the proxy's port; returns self."""
        if self.running:
            return self
        self.proxy.start()  # first: its port goes into Tansu's command line
        self._advertised_port = self.proxy.listen_port
        try:
            super().start()
        except BaseException:
            self.proxy.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop the proxy, then the broker; idempotent.

        The proxy goes first: it resets every client connection, so Tansu
        exits at once instead of waiting for them.
        """
        self.proxy.stop()
        super().stop(grace)

    def cut(self) -> None:
        """Make the broker unreachable: connections reset, connects refused."""
        self.proxy.cut()

    def restore(self) -> None:
        """Make the broker reachable again on the same address."""
        self.proxy.restore()

    def outage(self, seconds: float) -> None:
        """Cut, stay unreachable for ``seconds``, restore."""
        self.proxy.outage(seconds)

    def down(self) -> contextlib.AbstractContextManager[TcpProxy]:
        """Context manager: unreachable inside the ``with`` block."""
        return self.proxy.down()

    def __enter__(self) -> "ProxiedBroker":
        """Start broker and proxy (context manager entry)."""
        return self.start()
