"""Offset commits: per partition, only the offset below which every record is
finished (answered and all it produced delivered) is committed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from adapters.kafka_offsets import OffsetTracker, TopicPartitionKey
from entrypoints.worker.held_records import WorkerStats

log = logging.getLogger(__name__)


class OffsetCommits:
    """Commits what the offset tracker says is finished; notes what the broker
    confirmed, so that an offset is not committed twice."""

    def __init__(self, offsets: OffsetTracker, stats: WorkerStats) -> None:
        self.offsets = offsets
        self.stats = stats

    def commit(self, consumer: Consumer, asynchronous: bool) -> None:
        self._commit(consumer, self.offsets.to_commit(), asynchronous)

    def commit_revoked(
        self,
        consumer: Consumer,
        revoked: list[TopicPartitionKey],
        grace: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        """Partitions being revoked: let their records in flight finish first (for
        up to `grace` seconds), then commit them and forget the partitions."""
        if not self.offsets.wait_finished(revoked, grace, stopping) and grace:
            log.warning("records of revoked partitions still in flight after %.0fs", grace)
        self._commit(consumer, self.offsets.revoke(revoked), asynchronous=False)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's report of an asynchronous commit."""
        if error is not None:
            log.debug("commit not confirmed: %s", error)
            return
        for p in partitions:
            if p.error is None and p.offset >= 0:
                self.offsets.committed((p.topic, p.partition), p.offset)

    def _commit(
        self, consumer: Consumer, commits: list[tuple[TopicPartitionKey, int]], asynchronous: bool
    ) -> None:
        if not commits:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in commits]
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                # Typically a rebalance took the partition away: its new owner
                # fetches the records again and answers them from the event store.
                log.warning("offset commit failed: %s", error)
            return
        for (topic, partition), offset in commits:
            self.stats.committed[(topic, partition)] = offset
            if not asynchronous:
                self.offsets.committed((topic, partition), offset)
