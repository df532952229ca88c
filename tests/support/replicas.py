"""Worker processes as replicas: which partitions each owns (as its log tells),
waiting until the groups have settled, and requests through two of them."""

from __future__ import annotations

import ast
import json
import re
import signal
import time
import uuid
from pathlib import Path

from adapters.kafka import ensure_topics
from tests.support.records import produce, read
from tests.support.worker import WorkerProcess

OWNERSHIP = re.compile(r'"message": "(assigned|revoked|repartitioning|no longer repartitioning) (\[.*?\])"')


def text(conversation: int, turn: int) -> str:
    """The message of a conversation's turn, telling which it is (the model server sees it)."""
    return f"c{conversation}-t{turn}: question {turn} of conversation {conversation}"


def owned(worker: WorkerProcess) -> tuple[set[str], set[str]]:
    """The partitions a worker's two stages own now, as its log tells."""
    answering: set[str] = set()
    repartitioning: set[str] = set()
    for change, partitions in OWNERSHIP.findall(worker.log()):
        names = set(ast.literal_eval(partitions))
        if change == "assigned":
            answering |= names
        elif change == "revoked":
            answering -= names
        elif change == "repartitioning":
            repartitioning |= names
        else:
            repartitioning -= names
    return answering, repartitioning


def settled(workers: list[WorkerProcess], partitions: int) -> bool:
    """Both stages of every worker own partitions, and each partition has one owner."""
    stages = [owned(w) for w in workers]
    return all(a and r for a, r in stages) and all(
        len(set().union(*(stage[n] for stage in stages))) == partitions
        and sum(len(stage[n]) for stage in stages) == partitions
        for n in (0, 1)
    )


def wait_until_settled(workers: list[WorkerProcess], partitions: int, calm: float = 3.0,
                       timeout: float = 90.0) -> None:
    """Until the groups have settled and nothing moved for `calm` seconds: a cooperative
    rebalance moves partitions in more than one step, and between two steps every
    partition may have an owner for a moment."""
    deadline, calm_since, seen = time.monotonic() + timeout, time.monotonic(), None
    while True:
        now = [owned(w) for w in workers]
        if now != seen:
            seen, calm_since = now, time.monotonic()
        if settled(workers, partitions) and time.monotonic() - calm_since >= calm:
            return
        assert time.monotonic() < deadline, [w.log()[-2000:] for w in workers]
        time.sleep(0.2)


def run_replicas(broker, worker_env: dict[str, str], tmp_path: Path, settings: dict[str, str],
                 requests: list[tuple[str, dict]]) -> tuple[dict[str, dict], dict[str, str]]:
    """The requests (key, JSON body) through two replicas on a request topic of two
    partitions; the answers by key, and the replicas' environment. The replicas stop
    gracefully (their budget leases are settled) before this returns."""
    suffix = uuid.uuid4().hex[:8]
    env = {**worker_env, "REQUEST_TOPIC": f"replicas-{suffix}", "RESPONSE_TOPIC": f"replicas-{suffix}-out",
           "DLQ_TOPIC": f"replicas-{suffix}.dlq", "CONSUMER_GROUP": f"replicas-{suffix}",
           "MAX_TOKENS": "500", "TOPIC_PARTITIONS": "2", **settings}
    ensure_topics(broker.bootstrap_server, [env["REQUEST_TOPIC"]], partitions=2)
    ensure_topics(broker.bootstrap_server, [env["RESPONSE_TOPIC"], env["DLQ_TOPIC"]])
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in range(2)]
    for worker in workers:
        worker.start()
    try:
        wait_until_settled(workers, 2)  # both replicas take part from the first request
        produce(broker, env["REQUEST_TOPIC"], [(key, json.dumps(body).encode()) for key, body in requests])
        answers = dict(read(broker, env["RESPONSE_TOPIC"], len(requests), timeout=180))
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.stop(signal.SIGTERM)  # graceful: leases are settled
    assert not any("Traceback" in worker.log() for worker in workers)
    return answers, env
