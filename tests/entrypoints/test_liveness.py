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
