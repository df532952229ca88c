"""The topics a worker needs, prepared at start: created when missing (the
repartition topic always, the others with CREATE_TOPICS), and a warning for each
existing one whose settings do not fit the service's.

Records hold what users wrote, in clear, on the brokers: every topic the service
creates forgets them after `retention.ms`, no later than RETENTION_DAYS (the store's
retention), so that the brokers forget as the store does.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.kafka import ensure_topics, partition_count, topic_number
from entrypoints.settings import Settings
from entrypoints.worker.responder import largest_record

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


async def prepare_topics(settings: Settings, erasures: bool) -> int | None:
    """Create what is missing and check what exists; the request topic's number of
    partitions (None when the cluster did not say)."""
    kafka = settings.KAFKA
    retention = {"retention.ms": str(settings.topic_retention_ms)}
    dead_letters = {
        "retention.ms": str(settings.dlq_retention_ms),
        # Dead letters keep refused records whole, up to both bounds.
        "max.message.bytes": str(largest_record(settings)),
    }
    topics = [settings.REQUEST_TOPIC, settings.RESPONSE_TOPIC]
    if erasures:
        topics.append(settings.ERASE_TOPIC)
    if settings.CREATE_TOPICS:
        await asyncio.to_thread(ensure_topics, kafka, topics, settings.TOPIC_PARTITIONS, retention)
        await asyncio.to_thread(
            ensure_topics, kafka, [settings.DLQ_TOPIC], settings.TOPIC_PARTITIONS, dead_letters
        )
    # The service's own topic, created whatever CREATE_TOPICS says (as Kafka Streams
    # creates its internal topics): the request topic's partitions or
    # TOPIC_PARTITIONS, whichever is more, taking every record it may hold.
    requests = await asyncio.to_thread(partition_count, kafka, settings.REQUEST_TOPIC)
    await asyncio.to_thread(
        ensure_topics, kafka, [settings.repartition_topic],
        max(settings.TOPIC_PARTITIONS, requests or 0),
        {**retention, "max.message.bytes": str(largest_record(settings))},
    )
    for topic in [*topics, settings.repartition_topic]:
        await _check_retention(settings, topic, settings.topic_retention_ms, "TOPIC_RETENTION_DAYS")
    await _check_retention(settings, settings.DLQ_TOPIC, settings.dlq_retention_ms, "DLQ_RETENTION_DAYS")
    allowed = await asyncio.to_thread(topic_number, kafka, settings.DLQ_TOPIC, "max.message.bytes")
    needed = largest_record(settings)
    if allowed is not None and allowed < needed:
        log.warning(
            "topic %s takes records of at most %d bytes (max.message.bytes); dead letters "
            "of records at MAX_REQUEST_BYTES and MAX_KEY_BYTES need %d: larger ones are "
            "kept without their value", settings.DLQ_TOPIC, allowed, needed,
        )
    return requests


async def _check_retention(settings: Settings, topic: str, wanted_ms: int, setting: str) -> None:
    """Warn when an existing topic keeps records longer than the service may."""
    kept = await asyncio.to_thread(topic_number, settings.KAFKA, topic, "retention.ms")
    if kept is not None and (kept < 0 or kept > wanted_ms):
        log.warning(
            "topic %s keeps records %s (retention.ms=%d), longer than %g days (%s, at most "
            "RETENTION_DAYS): what users wrote stays on the brokers after the store forgot "
            "or erased it; set retention.ms=%d on it",
            topic, "forever" if kept < 0 else f"for {kept / DAY_MS:g} days", kept,
            wanted_ms / DAY_MS, setting, wanted_ms,
        )
