"""`chater-gpt check` compares partitions with replicas: given, or the answering
group's members as the cluster describes them. The embedded broker describes every
group with no members (a fault of its own), so the members are a stand-in here."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from entrypoints.check import _partitions
from entrypoints.settings import load_settings

SETTINGS = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="s", REQUEST_TOPIC="requests",
                         CONSUMER_GROUP="gpt")
REPARTITION = "gpt-requests-repartition"


class Cluster:
    """An AdminClient's describe_consumer_groups, with the members it reports."""

    def __init__(self, members: int | None) -> None:
        self.members = members
        self.asked: list[str] = []

    def describe_consumer_groups(self, groups, request_timeout):
        self.asked += groups
        future: Future = Future()
        if self.members is None:
            future.set_exception(RuntimeError("GROUP_ID_NOT_FOUND"))
        else:
            future.set_result(SimpleNamespace(members=[object()] * self.members))
        return {group: future for group in groups}


def test_the_members_of_the_answering_group_are_the_replicas():
    cluster = Cluster(members=4)
    finding = _partitions(SETTINGS, cluster, {"requests": 12, REPARTITION: 12}, None, 1.0)
    assert cluster.asked == ["gpt-answering"]
    assert (finding.status, finding.detail) == (
        "ok", "4 replicas (members of gpt-answering now), 12 partitions of requests: 3 each")


def test_more_replicas_than_the_fewest_partitions_idle():
    finding = _partitions(SETTINGS, Cluster(members=8), {"requests": 12, REPARTITION: 6}, None, 1.0)
    assert (finding.status, finding.detail) == (
        "warn", f"8 replicas (members of gpt-answering now), but {REPARTITION} has 6 partition(s): "
        "2 replica(s) would idle")


def test_an_uneven_share_is_said():
    finding = _partitions(SETTINGS, Cluster(members=None), {"requests": 12, REPARTITION: 12}, 5, 1.0)
    assert (finding.status, finding.detail) == (
        "ok", "5 replicas (--replicas), 12 partitions of requests: uneven, some replicas take 3")


def test_no_group_and_no_replicas_given_compares_nothing():
    for members in (None, 0):
        finding = _partitions(SETTINGS, Cluster(members), {"requests": 12}, None, 1.0)
        assert (finding.status, finding.detail) == (
            "skip", "no replica is running: --replicas N compares")
