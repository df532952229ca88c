"""What /metrics reads off the worker: the backlog by topic and partition from
librdkafka's statistics, retries and fallbacks by model, the provider's headroom."""

from __future__ import annotations

import json
from types import SimpleNamespace

from application.ports import RateLimitStatus
from entrypoints.health import WorkerGauges
from entrypoints.worker.consumer_loop import _backlog_of

UNKNOWN = -1001  # librdkafka's "no offset"


def test_the_backlog_splits_unfetched_from_fetched_but_uncommitted():
    assert _backlog_of({"hi_offset": 120, "next_offset": 100, "committed_offset": 70}) == {
        "unfetched": 20, "uncommitted": 30}
    # Nothing committed yet, or a watermark not known: that figure is left out.
    assert _backlog_of({"hi_offset": 120, "next_offset": 100, "committed_offset": UNKNOWN}) == {
        "unfetched": 20}
    assert _backlog_of({"hi_offset": UNKNOWN, "next_offset": UNKNOWN, "committed_offset": 5}) == {}


class Worker:
    def __init__(self) -> None:
        self.stats = SimpleNamespace(dead_lettered=3)

    def queue_depth(self) -> dict:
        return {"consumer_lag": {"gpt-send[3]": 7, "chater-gpt-gpt-send-repartition[11]": 2}}

    def backlog(self) -> dict:
        return {("gpt-send", 3): {"unfetched": 5, "uncommitted": 2},
                ("gpt-send", 4): {"uncommitted": 1}}


def gauges(**parts) -> WorkerGauges:
    metrics = SimpleNamespace(model_label=lambda m: m if m.startswith("gpt-") else "other")
    return WorkerGauges(metrics, Worker(), None, None, **parts)


def test_lag_and_backlog_have_topic_and_partition_as_labels_of_their_own():
    readings = gauges()
    assert sorted(readings.consumer_lag(), key=json.dumps) == sorted([
        (7, {"topic": "gpt-send", "partition": "3"}),
        (2, {"topic": "chater-gpt-gpt-send-repartition", "partition": "11"}),
    ], key=json.dumps)
    assert readings.backlog("unfetched") == [(5, {"topic": "gpt-send", "partition": "3"})]
    assert readings.backlog("uncommitted") == [(2, {"topic": "gpt-send", "partition": "3"}),
                                               (1, {"topic": "gpt-send", "partition": "4"})]
    assert readings.dead_letters() == [(3, {})]


def test_retries_fallbacks_and_headroom_by_model_with_unknown_names_as_one():
    retrying = SimpleNamespace(
        retries={("gpt-4o-mini", "rate_limited"): 2, ("acme-x", "upstream_error"): 1,
                 ("acme-y", "upstream_error"): 4},
        fallbacks={("gpt-4o-mini", "gpt-4.1", "circuit_open"): 5},
    )
    measured = SimpleNamespace(headroom={"gpt-4o-mini": RateLimitStatus(
        remaining_requests=42, limit_requests=500, remaining_tokens=None, limit_tokens=None)})
    readings = gauges(retries=retrying, measured=measured)
    assert sorted(readings.retries(), key=json.dumps) == sorted([
        (2, {"model": "gpt-4o-mini", "error": "rate_limited"}),
        (5, {"model": "other", "error": "upstream_error"}),
    ], key=json.dumps)
    assert readings.fallbacks() == [
        (5, {"model": "gpt-4o-mini", "fallback": "gpt-4.1", "reason": "circuit_open"})]
    assert readings.headroom("requests") == [(42, {"model": "gpt-4o-mini"})]
    assert readings.headroom("tokens") == []  # the provider did not say


def test_budget_limits_and_what_is_left_by_scope():
    ledger = SimpleNamespace(
        daily_limit=1_000_000, user_limit=50_000, dollars=SimpleNamespace(daily_limit=5_000_000),
        remaining_today=lambda: 900_000, remaining_dollars_today=lambda: 4.25,
    )
    readings = WorkerGauges(SimpleNamespace(), Worker(), None, ledger)
    assert readings.budget_limits() == [(1_000_000, {"scope": "service_tokens"}),
                                         (5.0, {"scope": "service_usd"}),
                                         (50_000, {"scope": "user_tokens"})]
    assert readings.budgets_remaining() == [(900_000, {"scope": "service_tokens"}),
                                            (4.25, {"scope": "service_usd"})]
