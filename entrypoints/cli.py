"""The `chater-gpt` command: worker, audit, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from entrypoints.settings import SettingsError, load_settings


def _configure_logging(level: str, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:  # one JSON object a line, for log collectors
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # The HTTP clients log every request at INFO: one line per model call, URL included.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def run_worker() -> int:
    from entrypoints.container import build_container
    from entrypoints.health import health_server, observe_worker

    settings = load_settings()
    _configure_logging(settings.LOG_LEVEL, json_lines=settings.LOG_FORMAT == "json")
    container = build_container(settings)
    worker = container.worker()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            if settings.HEALTH_PORT:
                metrics = container.metrics()
                observe_worker(metrics, worker, container.circuit_breaker(),
                               container.chat_service().ledger)
                await stack.enter_async_context(
                    health_server(container.health(), settings.HEALTH_PORT, metrics.prometheus_text)
                )
            await worker.run(stop)

    from entrypoints.worker import WorkerFailed

    try:
        asyncio.run(main())
    except WorkerFailed as error:
        logging.getLogger("chater-gpt").error("%s: %r", error, error.__cause__)
        return 1
    except OSError as error:  # the health port is taken, say
        logging.getLogger("chater-gpt").error("cannot start: %s", error)
        return 1
    finally:
        container.metrics().close()  # the last OTLP export, when there is one
        container.records().close()
    return 0


def run_audit(target: str, thread: str | None, as_of: int | None) -> int:
    from entrypoints.audit import ConversationNotFound, audit_report
    from entrypoints.container import build_container

    settings = load_settings(MODEL_PROVIDER="offline")
    _configure_logging("WARNING")
    container = build_container(settings)
    try:
        print(audit_report(container.records(), target, thread, as_of))
    except ConversationNotFound as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        container.records().close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chater-gpt", description="The GPT service of the Chater platform."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("worker", help="consume gpt-send and answer on gpt-response")
    audit = commands.add_parser("audit", help="replay a conversation's events")
    audit.add_argument("target", help="a user's email or a conversation id")
    audit.add_argument("--thread", help="the request's conversation_id, for one of several")
    audit.add_argument(
        "--as-of", type=int, metavar="N", help="stop at event N and show the state then"
    )
    commands.add_parser("demo", help="run everything on this machine and show it working")
    args = parser.parse_args(argv)
    try:
        if args.command == "worker":
            return run_worker()
        if args.command == "audit":
            return run_audit(args.target, args.thread, args.as_of)
        from entrypoints.demo import run_demo

        return run_demo()
    except SettingsError as error:
        print(f"chater-gpt: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
