"""A worker's start: wait for the database and the broker, one line per attempt.

While a dependency does not answer, the worker waits (capped backoff) instead of
exiting: an orchestrator restarting a crashed process gains nothing over a
process that waits, and a crash loop hides the reason behind its back-off. Every
attempt is bounded (a few seconds), runs in a daemon thread, and the wait ends
at once on SIGTERM or SIGINT: a process told to stop during its start stops
within a second or two, without waiting for the attempt it abandons.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from adapters.event_store import persistence_env
from adapters.postgres_setup import is_postgres, mask_password, probe

log = logging.getLogger("chater-gpt")

ATTEMPT_TIMEOUT = 3.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

T = TypeVar("T")


def in_daemon_thread(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`function(*args)` in a thread of its own that never holds up the process's
    exit (a blocked connect is abandoned, not awaited)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as raised:  # handed to the awaiting coroutine
            result, error = None, raised
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=run, daemon=True, name=f"start-{function.__name__}").start()
    return future


async def unless_stopped(future: asyncio.Future[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """(True, result) when `future` ends first, (False, None) when `stop` is set
    first (the future is left to finish on its own)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({future, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if future.done():
        return True, future.result()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())  # no warning
    return False, None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


async def keep_trying(
    what: str, attempt: Callable[[], Any], stop: asyncio.Event, reason: Callable[[BaseException], str]
) -> bool:
    """Run `attempt` (blocking, bounded) until it succeeds (True) or `stop` is set
    (False); after each failure one WARNING line: `what`, the reason, the wait."""
    delay = BACKOFF_FIRST
    number = 1
    while not stop.is_set():
        try:
            finished, _ = await unless_stopped(in_daemon_thread(attempt), stop)
        except Exception as error:
            log.warning("cannot reach %s: %s; attempt %d failed, retrying in %.0fs",
                        what, reason(error), number, delay)
        else:
            if not finished:
                break
            if number > 1:
                log.info("reached %s after %d attempts", what, number)
            return True
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, BACKOFF_MAX)
        number += 1
    log.info("stopped while waiting for %s", what)
    return False


async def wait_for_database(database_url: str, stop: asyncio.Event) -> bool:
    """Until PostgreSQL at DATABASE_URL accepts a connection (True), or `stop` (False).
    Embedded stores (SQLite, memory) need no wait."""
    env = persistence_env(database_url)
    if not is_postgres(env):
        return True
    return await keep_trying(
        f"the database at DATABASE_URL={mask_password(database_url)}",
        lambda: probe(env, ATTEMPT_TIMEOUT), stop, first_line,
    )


def _broker_reason(error: BaseException) -> str:
    # KafkaException's text is a KafkaError's repr; its str() is the readable part.
    args = getattr(error, "args", ())
    if args and hasattr(args[0], "str"):
        return str(args[0].str())
    return first_line(error)


async def wait_for_broker(config: dict[str, Any], stop: asyncio.Event) -> bool:
    """Until a broker of `config` (an admin client's settings) answers a metadata
    request (True), or `stop` (False)."""
    from adapters.kafka_probe import reach_broker

    return await keep_trying(
        f"the Kafka broker at BOOTSTRAP_SERVER={config['bootstrap.servers']}",
        lambda: reach_broker(config, ATTEMPT_TIMEOUT), stop, _broker_reason,
    )
