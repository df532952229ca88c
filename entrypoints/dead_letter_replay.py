"""`chater-gpt dead-letters --replay`: send dead letters back to the topic they came
from, once their cause is fixed (a bound raised, a producer mended, an outage over).

Each dead letter is replayed once: the command reads DLQ_TOPIC as the consumer group
`<CONSUMER_GROUP>-dead-letter-replay`, produces every dead letter it has not replayed
yet, and commits past them only once all of them are delivered. A second run replays
only the dead letters written since, such as those the replayed records became again.

A replayed record is the original key and bytes (opened with SECRET_KEY, or
SECRET_KEY_PREVIOUS during a rotation), produced to its `source_topic` with the header
`chater.replay_of` = `<dlq topic>/<partition>/<offset>`. A dead letter kept without
its value (the cluster refused the record whole), or from a topic the service does
not read, cannot be replayed: it is passed over and said so. One sealed with another
SECRET_KEY stops the replay there (committed up to it), so that a run with that key
as SECRET_KEY_PREVIOUS goes on from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from cryptography.exceptions import InvalidTag

from adapters.dead_letters import SEALED_HEADER, DeadLetterSeal
from adapters.kafka import consumer_config, producer_config
from entrypoints.settings import Settings

REPLAY_HEADER = "chater.replay_of"
JOIN_SECONDS = 60.0


@dataclass
class Replay:
    produced: int = 0
    passed_over: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped_at: str | None = None  # a dead letter the keys given cannot open

    @property
    def replayed(self) -> int:
        return self.produced - len(self.failed)

    def summary(self, dlq: str) -> str:
        line = f"replayed {self.replayed} dead letter(s) from {dlq}"
        if self.passed_over:
            line += f"; passed over {len(self.passed_over)} that cannot be replayed"
        if self.failed:
            line += f"; {len(self.failed)} not delivered: nothing committed, run it again"
        if self.stopped_at:
            line += f"; stopped at {self.stopped_at}, which SECRET_KEY cannot open"
        return line


def replay_dead_letters(settings: Settings, say: Callable[[str], None] = print) -> Replay:
    """Replay what this group has not replayed yet; one line per dead letter to `say`."""
    assert settings.SECRET_KEY is not None  # validated
    previous = settings.SECRET_KEY_PREVIOUS
    seal = DeadLetterSeal(
        settings.SECRET_KEY.get_secret_value(), previous.get_secret_value() if previous else None
    )
    group = f"{settings.CONSUMER_GROUP}-dead-letter-replay"
    consumer = Consumer({**consumer_config(settings.KAFKA, group), "enable.partition.eof": True})
    producer = Producer(producer_config(settings.KAFKA, settings.MAX_REQUEST_BYTES
                                        + settings.MAX_KEY_BYTES + 64 * 1024))
    replay = Replay()
    readable = {settings.REQUEST_TOPIC, settings.ERASE_TOPIC}
    try:
        _partitions(consumer, settings.DLQ_TOPIC)  # it exists, or a clear error
        assigned: list[TopicPartition] = []
        consumer.subscribe([settings.DLQ_TOPIC], on_assign=lambda _, parts: assigned.extend(parts))
        deadline = time.monotonic() + JOIN_SECONDS
        at_end: set[int] = set()
        last: dict[int, int] = {}
        while not assigned or len(at_end) < len(assigned):
            message = consumer.poll(0.5)
            if message is None:
                if not assigned and time.monotonic() > deadline:
                    raise RuntimeError(f"no partition of {settings.DLQ_TOPIC} was assigned to "
                                       f"{group} within {JOIN_SECONDS:.0f} s")
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise RuntimeError(f"reading {settings.DLQ_TOPIC}: {message.error().name()}")
            at_end.discard(message.partition())
            if not _replay_one(message, seal, readable, producer, replay, say):
                break  # committed up to it: a run with the key it needs goes on from it
            last[message.partition()] = message.offset()
        producer.flush(30)
        if not replay.failed and last:
            consumer.commit(offsets=[TopicPartition(settings.DLQ_TOPIC, p, o + 1)
                                     for p, o in last.items()], asynchronous=False)
    finally:
        consumer.close()
    return replay


def _partitions(consumer: Consumer, topic: str) -> int:
    about = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if about is None or about.error is not None:
        raise RuntimeError(f"the dead-letter topic {topic} does not exist")
    return len(about.partitions)


def _replay_one(message: Message, seal: DeadLetterSeal, readable: set[str], producer: Producer,
                replay: Replay, say: Callable[[str], None]) -> bool:
    """Replay it, or pass it over; False when it cannot be opened with the keys given,
    and the replay must stop there."""
    headers = {k: (v or b"").decode(errors="replace") for k, v in message.headers() or []}
    where = f"{message.topic()}/{message.partition()}/{message.offset()}"
    key = message.key()
    shown = (key or b"").decode(errors="replace")
    source = headers.get("source_topic", "")
    if "value_omitted" in headers or SEALED_HEADER not in headers:
        replay.passed_over.append(where)
        say(f"passed over {where} key={shown!r}: kept without its value")
        return True
    if source not in readable:
        replay.passed_over.append(where)
        say(f"passed over {where} key={shown!r}: from {source or 'no topic'}, which the "
            "service does not read")
        return True
    try:
        value = seal.open(message.value() or b"")
    except InvalidTag:
        replay.stopped_at = where
        say(f"stopped at {where} key={shown!r}: sealed with another SECRET_KEY; set the one it "
            "was sealed with as SECRET_KEY_PREVIOUS and run it again")
        return False

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            replay.failed.append(where)
            say(f"not delivered {where} key={shown!r}: {error.name()}")

    producer.produce(source, value, key, headers=[(REPLAY_HEADER, where.encode())],
                     on_delivery=delivered)
    producer.poll(0)
    replay.produced += 1
    say(f"replayed {where} key={shown!r} to {source} (it was: {headers.get('reason', '?')})")
    return True
