"""Liveness: failed once the worker cannot go on; stalled while work makes no progress
although every dependency answers (a wedge); alive while it waits for a dependency."""

from __future__ import annotations

from entrypoints.health import CheckResult, HealthChecks


async def nothing() -> dict:
    return {}


def checks(stalled: bool, alive: bool = True) -> HealthChecks:
    health = HealthChecks(
        {"event_store": nothing, "kafka_broker": nothing, "queue_depth": nothing},
        alive=lambda: alive, stalled=lambda: stalled, dependencies=("event_store", "kafka_broker"),
    )
    for name in health.results:
        health.results[name] = CheckResult("ok")
    return health


def test_a_stall_while_every_dependency_answers_is_a_wedge():
    assert checks(stalled=False).liveness() == (True, "alive")
    assert checks(stalled=True).liveness() == (False, "stalled")
    assert checks(stalled=False, alive=False).liveness() == (False, "failed")


def test_a_stall_while_a_dependency_is_down_is_waiting_not_a_wedge():
    health = checks(stalled=True)
    health.results["event_store"] = CheckResult("failing", {"error": "event store unreachable"})
    assert health.liveness() == (True, "alive")


def test_a_stall_while_the_provider_is_degraded_is_waiting_not_a_wedge():
    """The provider's check never fails (a provider outage must not make every replica
    unready at once), but calls held back by it excuse a stall as a failing check does."""
    health = HealthChecks(
        {"openai_api": nothing, "kafka_broker": nothing}, alive=lambda: True,
        stalled=lambda: True, dependencies=("openai_api", "kafka_broker"),
    )
    health.results["kafka_broker"] = CheckResult("ok")
    health.results["openai_api"] = CheckResult(
        "ok", {"degraded": True, "paused": {"reason": "insufficient_quota", "held": 3}}
    )
    assert health.liveness() == (True, "alive") and health.report()[0]
    health.results["openai_api"] = CheckResult("ok", {"degraded": False})
    assert health.liveness() == (False, "stalled")


async def test_the_providers_check_reports_the_pause_and_held_calls_without_failing():
    from types import SimpleNamespace

    from entrypoints.health import WorkerGauges, worker_checks

    breaker = SimpleNamespace(
        states=lambda: {"gpt-4o-mini": "open", "gpt-4.1": "closed"},
        waiting=lambda: {"gpt-4o-mini": 2},
        paused=lambda: "insufficient_quota",
        paused_waiting=lambda: 5,
    )
    worker = SimpleNamespace(alive=lambda: True, stalled=lambda: [], erasure_health=None)
    health = worker_checks(worker, records=None, circuit_breaker=breaker)
    await health._run("openai_api")
    result = health.results["openai_api"]
    assert result.as_json() == {
        "status": "ok", "degraded": True, "circuits": {"gpt-4o-mini": "open", "gpt-4.1": "closed"},
        "held_at_circuit": {"gpt-4o-mini": 2},
        "paused": {"reason": "insufficient_quota", "held": 5},
    }
    gauges = WorkerGauges(None, worker, breaker, None)
    assert (1, {"reason": "insufficient_quota"}) in gauges.provider_paused()
    assert sum(value for value, _ in gauges.provider_paused()) == 1
