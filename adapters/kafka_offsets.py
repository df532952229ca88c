"""Which offsets are safe to commit when records finish out of order."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STOP_CHECK_INTERVAL = 0.5  # seconds between looks at `stopping` while waiting

TopicPartitionKey = tuple[str, int]


@dataclass
class _Partition:
    epoch: int
    pending: deque[int] = field(default_factory=deque)  # fetched, in offset order
    finished: set[int] = field(default_factory=set)
    next_offset: int | None = None  # everything below it is finished
    committed: int | None = None
    # The group's committed offset when assigned: where fetching should begin.
    start: int | None = None


class OffsetTracker:
    """Per partition, the highest offset below which every fetched record is finished.

    Thread-safe: records finish on the event loop while rebalance callbacks run
    in the consumer's polling thread. Each assignment of a partition has its own
    epoch, so work fetched before a partition was revoked can be recognised and
    dropped when it comes back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        self._partitions: dict[TopicPartitionKey, _Partition] = {}
        self._epochs = itertools.count(1)

    def assign(
        self, partitions: list[TopicPartitionKey], committed: dict[TopicPartitionKey, int] | None = None
    ) -> None:
        """New assignments; `committed`: the group's committed offsets, where known."""
        with self._lock:
            for tp in partitions:
                self._partitions[tp] = _Partition(next(self._epochs), start=(committed or {}).get(tp))

    def revoke(self, partitions: list[TopicPartitionKey]) -> list[tuple[TopicPartitionKey, int]]:
        """Forget the partitions; returns the offsets still worth committing for them."""
        with self._lock:
            commits = []
            for tp in partitions:
                state = self._partitions.pop(tp, None)
                if state and state.next_offset is not None and state.next_offset != state.committed:
                    commits.append((tp, state.next_offset))
            return commits

    def add(self, tp: TopicPartitionKey, offset: int) -> int | None:
        """Note a fetched record; returns its epoch, None if it is not ours to answer.

        A record of a partition not assigned, or at or below an offset already
        seen in this assignment (fetched before a rebalance), gets None.
        """
        with self._lock:
            state = self._partitions.get(tp)
            if state is None:
                return None
            if state.pending and offset <= state.pending[-1]:
                return None
            if state.next_offset is not None and offset < state.next_offset:
                return None
            expected = (
                state.pending[-1] + 1 if state.pending
                else state.next_offset if state.next_offset is not None else state.start
            )
            if expected is not None and offset > expected:
                # Not a fault of this worker's; said, so that it is not silent: a
                # topic with no transactions and no compaction has no such gaps.
                log.warning("%s[%d]: offsets %d to %d were never fetched (the next one "
                            "fetched is %d)", *tp, expected, offset - 1, offset)
            state.pending.append(offset)
            return state.epoch

    def finish(self, tp: TopicPartitionKey, offset: int, epoch: int | None) -> None:
        with self._lock:
            state = self._partitions.get(tp)
            if state is None or state.epoch != epoch:
                return
            state.finished.add(offset)
            while state.pending and state.pending[0] in state.finished:
                done = state.pending.popleft()
                state.finished.discard(done)
                state.next_offset = done + 1
            if not state.pending:
                self._finished.notify_all()

    def wait_finished(
        self,
        partitions: list[TopicPartitionKey],
        timeout: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Wait until every fetched record of these partitions is finished, for at
        most `timeout` seconds, and no longer once `stopping` says so."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if all(not self._partitions[tp].pending for tp in partitions if tp in self._partitions):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or stopping():
                    return False
                self._finished.wait(min(left, STOP_CHECK_INTERVAL))

    def is_current(self, tp: TopicPartitionKey, epoch: int | None) -> bool:
        with self._lock:
            state = self._partitions.get(tp)
            return state is not None and state.epoch == epoch

    def to_commit(self) -> list[tuple[TopicPartitionKey, int]]:
        """Offsets finished beyond what the broker has confirmed as committed."""
        with self._lock:
            return [
                (tp, state.next_offset)
                for tp, state in self._partitions.items()
                if state.next_offset is not None and state.next_offset != state.committed
            ]

    def committed(self, tp: TopicPartitionKey, offset: int) -> None:
        """The broker confirmed a commit (asynchronous commits are confirmed later)."""
        with self._lock:
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset

    def unfinished(self) -> int:
        with self._lock:
            return sum(len(state.pending) for state in self._partitions.values())
