"""Health of a worker process over HTTP: `/healthz` (alive) and `/readyz` (ready).

The checks run in the background every CHECK_INTERVAL seconds, each bounded by
CHECK_TIMEOUT, and a request only reads their latest results: a probe never
waits on a dependency that hangs, and many probes cost nothing extra. A check
that has not answered within its timeout counts as failing until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
CHECK_TIMEOUT = 2.0
# Above this share of the container's memory limit the worker reports not ready.
MEMORY_LIMIT_SHARE = 0.9
CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"


@dataclass
class CheckResult:
    status: str  # "ok" or "failing"
    figure: dict[str, Any] = field(default_factory=dict)
    checked_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, **self.figure}

    def answers(self) -> bool:
        """Whether the dependency works: ok and not `degraded` (a degraded one does
        not make the worker unready, but a stall behind it is waiting, not a wedge)."""
        return self.status == "ok" and not self.figure.get("degraded")


Check = Callable[[], Awaitable[dict[str, Any]]]


class CheckFailed(Exception):
    """A check's dependency is not usable; the message says why, safe to show."""


class HealthChecks:
    """Named checks, refreshed in the background; `report()` reads the latest results."""

    def __init__(
        self,
        checks: dict[str, Check],
        alive: Callable[[], bool],
        stalled: Callable[[], bool] = lambda: False,
        dependencies: tuple[str, ...] = (),
    ) -> None:
        """`alive`: False once the process cannot go on. `stalled`: whether work
        makes no progress; while every check named in `dependencies` passes, that
        is a wedge (a restart is needed), otherwise it waits for a dependency."""
        self.checks = checks
        self.alive = alive
        self.stalled = stalled
        self.dependencies = dependencies
        self.results = {
            name: CheckResult("failing", {"error": "not checked yet"}) for name in checks
        }
        self._running: dict[str, asyncio.Task[None]] = {}

    async def refresh(self) -> None:
        """Run every check once (those still running from before are not started again)."""
        await asyncio.gather(*(self._refresh(name) for name in self.checks))

    async def _refresh(self, name: str) -> None:
        task = self._running.get(name)
        if task is None or task.done():
            task = self._running[name] = asyncio.create_task(self._run(name))
        try:
            await asyncio.wait_for(asyncio.shield(task), CHECK_TIMEOUT)
        except TimeoutError:
            self._record(name, CheckResult(
                "failing", {"error": f"no answer within {CHECK_TIMEOUT:.0f}s"}, time.time()
            ))

    async def _run(self, name: str) -> None:
        try:
            figure = await self.checks[name]()
            result = CheckResult("ok", figure, time.time())
        except CheckFailed as error:
            result = CheckResult("failing", {"error": str(error)}, time.time())
        except Exception as error:  # a check must not take the health server down
            result = CheckResult("failing", {"error": type(error).__name__}, time.time())
        self._record(name, result)

    def _record(self, name: str, result: CheckResult) -> None:
        if result.status != self.results[name].status:
            log.log(
                logging.WARNING if result.status == "failing" else logging.INFO,
                "health check %s: %s %s", name, result.status, json.dumps(result.figure),
            )
        self.results[name] = result

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL)
            except TimeoutError:
                pass
        for task in self._running.values():
            task.cancel()

    def liveness(self) -> tuple[bool, str]:
        """(alive, "alive" | "failed" | "stalled"): stalled counts only while every
        dependency answers, since a restart would not bring one back."""
        if not self.alive():
            return False, "failed"
        if self.stalled() and all(
            self.results[name].answers() for name in self.dependencies if name in self.results
        ):
            return False, "stalled"
        return True, "alive"

    def report(self) -> tuple[bool, dict[str, Any]]:
        ready = all(r.status == "ok" for r in self.results.values())
        return ready, {
            "status": "ready" if ready else "not ready",
            "checks": {name: result.as_json() for name, result in self.results.items()},
        }


def memory_figure() -> dict[str, Any]:
    """This process's resident memory, against the container's limit when there is one."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * page
    except OSError:  # not Linux: the peak is the best there is
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figure: dict[str, Any] = {"rss_mib": round(rss / 2**20, 1)}
    try:
        with open(CGROUP_MEMORY_MAX) as limit_file:
            limit = limit_file.read().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        figure["limit_mib"] = round(int(limit) / 2**20, 1)
        if rss > MEMORY_LIMIT_SHARE * int(limit):
            raise CheckFailed(
                f"resident memory {figure['rss_mib']} MiB is above "
                f"{MEMORY_LIMIT_SHARE:.0%} of the limit {figure['limit_mib']} MiB"
            )
    return figure


CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}
PAUSE_REASONS = ("insufficient_quota", "api_key_refused", "permission_denied")


Readings = list[tuple[float, dict[str, str]]]


def observe_worker(metrics: Any, worker: Any, circuit_breaker: Any, ledger: Any,
                   retries: Any = None, measured: Any = None) -> None:
    """Gauges and counters read when metrics are collected: what the worker holds,
    how far it lags, what is left of the day's budget, each model's circuit, the
    provider's headroom, and the retries, fallbacks and dead letters since start."""
    gauges = WorkerGauges(metrics, worker, circuit_breaker, ledger, retries, measured)
    metrics.watch("chater_gpt_in_flight", "Records held by the worker now", gauges.in_flight)
    metrics.watch("chater_gpt_backlog_unfetched",
                  "Records on the broker this worker's partitions have not fetched yet, by "
                  "topic and partition (the high watermark less the next offset to fetch)",
                  partial(gauges.backlog, "unfetched"))
    metrics.watch("chater_gpt_backlog_uncommitted",
                  "Records fetched but not committed yet (prefetched, held or being "
                  "answered), by topic and partition",
                  partial(gauges.backlog, "uncommitted"))
    metrics.count("chater_gpt_dead_letters", "Records sent to the dead-letter topic since "
                  "start (gpt-send's; erasure requests' are in chater_gpt_erasures)",
                  gauges.dead_letters)
    metrics.count("chater_gpt_model_retries", "Calls to the model provider tried again, by "
                  "model and the error that made it try again", gauges.retries)
    metrics.count("chater_gpt_model_fallbacks", "Calls FALLBACK_MODEL answered instead, by "
                  "model, fallback and why (the error, or circuit_open)", gauges.fallbacks)
    metrics.watch("chater_gpt_provider_remaining_requests",
                  "Requests the provider's last answer said are left in its window "
                  "(x-ratelimit-remaining-requests), by model", partial(gauges.headroom, "requests"))
    metrics.watch("chater_gpt_provider_remaining_tokens",
                  "Tokens the provider's last answer said are left in its window "
                  "(x-ratelimit-remaining-tokens), by model", partial(gauges.headroom, "tokens"))
    metrics.watch("chater_gpt_batch_waiting",
                  "Requests parked in open Batch API batches (all replicas, as last polled)",
                  gauges.batch_waiting)
    metrics.watch("chater_gpt_consumer_lag", "Records not yet committed (librdkafka's "
                  "consumer_lag), by topic and partition", gauges.consumer_lag)
    metrics.watch("chater_gpt_budget_remaining_tokens",
                  "Tokens of the day neither spent nor held (leases included)",
                  gauges.budget_remaining)
    metrics.watch("chater_gpt_budget_limit",
                  "Daily limits by scope: service_tokens (DAILY_TOKEN_LIMIT), service_usd "
                  "(DAILY_COST_LIMIT), user_tokens (USER_DAILY_TOKEN_LIMIT, each user's)",
                  gauges.budget_limits)
    metrics.watch("chater_gpt_budget_remaining",
                  "What is left of today's limits by scope (service_tokens, service_usd), "
                  "neither spent nor held, as this replica last saw it", gauges.budgets_remaining)
    metrics.watch("chater_gpt_circuit_state", "Per model: 0 closed, 1 half-open, 2 open",
                  gauges.circuits)
    metrics.watch("chater_gpt_provider_paused",
                  "1 while the model provider refuses this account, by reason "
                  "(insufficient_quota, api_key_refused, permission_denied): calls wait",
                  gauges.provider_paused)
    metrics.watch("chater_gpt_stalled_records",
                  "Records held past their deadline and the stall grace: their lane makes "
                  "no progress", gauges.stalled)
    metrics.watch("chater_gpt_erasure_consumer_up",
                  "1 while the erasure consumer runs and polls, else 0",
                  gauges.erasure_consumer_up)
    metrics.watch("chater_gpt_erasures",
                  "Erasure requests since start, by outcome: applied, dead_lettered, or "
                  "refused (a dead letter the cluster would not take: logged only)",
                  gauges.erasures)


class WorkerGauges:
    """The readings of `observe_worker`'s gauges, each a list of (value, labels)."""

    def __init__(self, metrics: Any, worker: Any, circuit_breaker: Any, ledger: Any,
                 retries: Any = None, measured: Any = None) -> None:
        self.metrics = metrics
        self.worker = worker
        self.circuit_breaker = circuit_breaker
        self.ledger = ledger
        self.retrying = retries
        self.measured = measured

    def in_flight(self) -> Readings:
        return [(self.worker.stats.in_flight, {})]

    def batch_waiting(self) -> Readings:
        return [(self.worker.stats.batch_waiting, {})]

    def stalled(self) -> Readings:
        return [(len(self.worker.stalled()), {})]

    def consumer_lag(self) -> Readings:
        readings = []
        for name, lag in self.worker.queue_depth()["consumer_lag"].items():
            topic, _, number = name[:-1].rpartition("[")  # "gpt-send[3]"
            readings.append((lag, {"topic": topic, "partition": number}))
        return readings

    def backlog(self, kind: str) -> Readings:
        return [
            (figures[kind], {"topic": topic, "partition": str(partition)})
            for (topic, partition), figures in self.worker.backlog().items() if kind in figures
        ]

    def dead_letters(self) -> Readings:
        return [(self.worker.stats.dead_lettered, {})]

    def retries(self) -> Readings:
        if self.retrying is None:
            return []
        totals: dict[tuple[str, str], int] = {}
        for (model, error), n in self.retrying.retries.items():
            key = (self.metrics.model_label(model), error)
            totals[key] = totals.get(key, 0) + n
        return [(n, {"model": model, "error": error}) for (model, error), n in totals.items()]

    def fallbacks(self) -> Readings:
        if self.retrying is None:
            return []
        totals: dict[tuple[str, str, str], int] = {}
        for (model, fallback, why), n in self.retrying.fallbacks.items():
            key = (self.metrics.model_label(model), self.metrics.model_label(fallback), why)
            totals[key] = totals.get(key, 0) + n
        return [(n, {"model": m, "fallback": f, "reason": why}) for (m, f, why), n in totals.items()]

    def headroom(self, kind: str) -> Readings:
        if self.measured is None:
            return []
        readings = []
        for model, status in self.measured.headroom.items():
            left = status.remaining_requests if kind == "requests" else status.remaining_tokens
            if left is not None:
                readings.append((left, {"model": model}))
        return readings

    def budget_remaining(self) -> Readings:
        left = self.ledger.remaining_today()
        return [] if left is None else [(left, {})]

    def budget_limits(self) -> Readings:
        readings = [(self.ledger.daily_limit, {"scope": "service_tokens"})]
        dollars = getattr(self.ledger, "dollars", None)
        if dollars is not None:
            readings.append((dollars.daily_limit / 1_000_000, {"scope": "service_usd"}))
        if getattr(self.ledger, "user_limit", None) is not None:
            readings.append((self.ledger.user_limit, {"scope": "user_tokens"}))
        return readings

    def budgets_remaining(self) -> Readings:
        readings = self.budget_remaining()
        readings = [(value, {"scope": "service_tokens"}) for value, _ in readings]
        remaining_dollars = getattr(self.ledger, "remaining_dollars_today", lambda: None)()
        if remaining_dollars is not None:
            readings.append((remaining_dollars, {"scope": "service_usd"}))
        return readings

    def circuits(self) -> Readings:
        worst: dict[str, int] = {}  # models shown as one label ("other") show the worst
        for model, state in self.circuit_breaker.states().items():
            label = self.metrics.model_label(model)
            worst[label] = max(worst.get(label, 0), CIRCUIT_STATES[state])
        return [(state, {"model": label}) for label, state in worst.items()]

    def provider_paused(self) -> Readings:
        paused = self.circuit_breaker.paused()
        return [(int(reason == paused), {"reason": reason}) for reason in PAUSE_REASONS]

    def erasure_consumer_up(self) -> Readings:
        status = _erasure_health(self.worker)
        return [] if status is None else [(0 if "problem" in status else 1, {})]

    def erasures(self) -> Readings:
        status = _erasure_health(self.worker)
        if status is None:
            return []
        outcomes = ("applied", "dead_lettered", "refused")
        return [(status[outcome], {"outcome": outcome}) for outcome in outcomes]


def _erasure_health(worker: Any) -> dict[str, Any] | None:
    """The worker's erasure consumer status; None when it has no erasure consumer."""
    erasure_health = getattr(worker, "erasure_health", None)
    return None if erasure_health is None else erasure_health()


def health_app(
    health: HealthChecks, metrics_text: Callable[[], tuple[bytes, str]] | None = None
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        alive, status = health.liveness()
        return web.json_response({"status": status}, status=200 if alive else 503)

    async def readyz(_: web.Request) -> web.Response:
        ready, body = health.report()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        assert metrics_text is not None
        body, content_type = metrics_text()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    if metrics_text is not None:
        app.add_routes([web.get("/metrics", metrics)])
    return app


@contextlib.asynccontextmanager
async def health_server(
    health: HealthChecks,
    port: int,
    metrics_text: Callable[[], tuple[bytes, str]] | None = None,
    host: str | None = None,
) -> AsyncIterator[int]:
    """Serve the health endpoints (and `/metrics`) on `port` and refresh the checks
    in the background, until the block ends. Port 0 takes any free port, which is
    yielded: give a `host` then (IPv4 and IPv6 would get different ports)."""
    runner = web.AppRunner(health_app(health, metrics_text), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    refreshing: asyncio.Task[None] | None = None
    try:
        # All interfaces: the kubelet probes the pod's address, not loopback.
        site = web.TCPSite(runner, host=host, port=port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0][1]
        log.info("health on port %d: /healthz, /readyz%s", bound,
                 ", /metrics" if metrics_text else "")
        refreshing = asyncio.create_task(health.run(stop))
        yield bound
    finally:
        stop.set()
        if refreshing is not None:
            await refreshing
        await runner.cleanup()


def worker_checks(
    worker: Any, records: Any, circuit_breaker: Any,
    model_label: Callable[[str], str] = lambda model: model,
) -> HealthChecks:
    """The checks of a Kafka worker process: its broker, its store, the model, itself."""
    # Threads of their own: while the store is down, its calls fill the default
    # executor, and the broker's check must not queue behind them.
    probes = ThreadPoolExecutor(2, thread_name_prefix="health")

    async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(probes, function, *args)

    async def kafka_broker() -> dict[str, Any]:
        started = time.perf_counter()
        try:
            brokers = await in_thread(worker.probe_broker, CHECK_TIMEOUT)
        except Exception as error:
            raise CheckFailed(f"broker unreachable: {error_name(error)}") from None
        return {"brokers": brokers, "latency_ms": _millis_since(started)}

    async def event_store() -> dict[str, Any]:
        started = time.perf_counter()
        try:
            position = await in_thread(records.recorder.max_notification_id)
        except Exception as error:
            raise CheckFailed(f"event store unreachable: {type(error).__name__}") from None
        return {"notifications": position or 0, "latency_ms": _millis_since(started)}

    async def openai_api() -> dict[str, Any]:
        # Reported, never failing: a provider outage or an exhausted quota reaches
        # every replica at once, and unready replicas everywhere would stall
        # rollouts and node drains while changing nothing (the calls wait at the
        # circuit breaker, and MAX_IN_FLIGHT pauses fetching). `degraded` says
        # calls are held back now; liveness then counts a stall as waiting.
        circuits = {model_label(m): state for m, state in circuit_breaker.states().items()}
        held = {model_label(m): n for m, n in circuit_breaker.waiting().items() if n > 0}
        paused = circuit_breaker.paused()
        figure: dict[str, Any] = {"circuits": circuits, "degraded": bool(held or paused)}
        if held:
            figure["held_at_circuit"] = held
        if paused:
            figure["paused"] = {"reason": paused, "held": circuit_breaker.paused_waiting()}
        return figure

    async def memory_usage() -> dict[str, Any]:
        return memory_figure()

    async def queue_depth() -> dict[str, Any]:
        depth = worker.queue_depth()
        if depth.get("stalled"):
            raise CheckFailed(
                f"{depth['stalled']} record(s) stalled: held past their deadline by more "
                "than STALL_GRACE"
            )
        return depth

    async def erasures() -> dict[str, Any]:
        status = dict(_erasure_health(worker) or {})
        problem = status.pop("problem", None)
        if problem is not None:
            raise CheckFailed(problem)
        return status

    return HealthChecks(
        {
            "openai_api": openai_api,
            "kafka_broker": kafka_broker,
            "event_store": event_store,
            "memory_usage": memory_usage,
            "queue_depth": queue_depth,
            # Only a worker that takes erasure requests has their consumer.
            **({"erasures": erasures} if _erasure_health(worker) is not None else {}),
        },
        alive=worker.alive,
        stalled=lambda: bool(worker.stalled()),
        dependencies=("openai_api", "kafka_broker", "event_store"),
    )


def _millis_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def error_name(error: BaseException) -> str:
    """A short, safe reason: librdkafka's error name, never a stack or an address."""
    args = getattr(error, "args", ())
    if args and hasattr(args[0], "name"):
        return str(args[0].name())
    return type(error).__name__
