"""Kafka clients (confluent-kafka) configured for at-least-once consumption.

Client settings come from the environment: every `KAFKA_*` variable is a librdkafka
property (`KAFKA_SECURITY_PROTOCOL` is `security.protocol`: the rest of the name in
lower case, underscores as dots). `KafkaSettings` holds them, built once at start-up
and checked by librdkafka itself; `consumer_config`, `producer_config` and
`admin_config` add the worker's own defaults and the properties it depends on.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from adapters.secret_file import SecretFileError, read_secret_file

log = logging.getLogger(__name__)

PREFIX = "KAFKA_"
# Producers compress with it unless KAFKA_COMPRESSION_TYPE says otherwise: every
# mainstream client reads uncompressed batches without extra packages (kafkajs has
# no LZ4, kafka-python needs the lz4 package for it).
DEFAULT_COMPRESSION = "none"
# Properties whose values are secrets: also read from KAFKA_<NAME>_FILE, never shown.
_SECRET_MARKERS = ("password", "secret", "key.pem", "private.key", "oauthbearer.config")
# Kubernetes adds these for every Service in the namespace (service links): for one
# named "kafka" (KAFKA_PORT, KAFKA_SERVICE_HOST…) and for any named "kafka-…"
# (KAFKA_UI_SERVICE_HOST, KAFKA_KAFKA_BOOTSTRAP_PORT_9092_TCP_ADDR…). They are
# addresses, not librdkafka properties.
_SERVICE_LINK = re.compile(
    r"KAFKA_PORT(_\w+)?"
    r"|KAFKA_\w*_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)"
    r"|KAFKA_(SERVICE_HOST|SERVICE_PORT(_\w+)?)"
)
_UNKNOWN_PROPERTY = "No such configuration property"
# Set by the worker, from its own settings; a variable may not change them.
_RESERVED = {
    "group.id": "the worker's consumer group is CONSUMER_GROUP",
    "enable.auto.commit": "the worker commits offsets itself, once a record is answered",
    "enable.auto.offset.store": "the worker commits offsets itself, once a record is answered",
    "transactional.id": "the worker's producers do not use transactions (one would refuse every send outside one)",
}
# Settings the new rebalance protocol (group.protocol=consumer, KIP-848) refuses:
# the broker decides them.
CLASSIC_PROTOCOL_ONLY = (
    "session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy",
    "group.protocol.type",
)
# librdkafka's lines about the throwaway clients that check the settings.
_check_log = logging.getLogger("chater-gpt.kafka-settings-check")
_check_log.addHandler(logging.NullHandler())
_check_log.propagate = False


class KafkaSettingsError(ValueError):
    """KAFKA_* variables librdkafka refuses; the message names them, never a secret."""


def is_secret(prop: str) -> bool:
    return any(marker in prop for marker in _SECRET_MARKERS)


def property_name(variable: str) -> str:
    """`KAFKA_SSL_CA_LOCATION` → `ssl.ca.location`."""
    return variable.removeprefix(PREFIX).lower().replace("_", ".")


@dataclass(frozen=True, repr=False)
class KafkaSettings:
    """librdkafka properties from the environment, sorted by the clients they apply to:
    `common` to every client, `consumer` and `producer` to one kind only (librdkafka
    warns, once per client, about a property of the other kind)."""

    common: Mapping[str, str]
    consumer: Mapping[str, str] = field(default_factory=dict)
    producer: Mapping[str, str] = field(default_factory=dict)
    # property → the variable it came from (for messages)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return self.common["bootstrap.servers"]

    @property
    def new_group_protocol(self) -> bool:
        return self.consumer.get("group.protocol", "classic").lower() == "consumer"

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'**********' if is_secret(name) else value}"
            for part in (self.common, self.consumer, self.producer)
            for name, value in sorted(part.items())
        )
        return f"KafkaSettings({shown})"


def kafka_variables(*sources: Mapping[str, Any]) -> dict[str, str]:
    """The KAFKA_* variables of `sources` (later ones win), blank ones left out (a
    manifest that sets one to "" means "not set"), Kubernetes' service links too."""
    found: dict[str, str] = {}
    for source in sources:
        for name, value in source.items():
            if not name.startswith(PREFIX) or _SERVICE_LINK.fullmatch(name):
                continue
            if isinstance(value, str) and value.strip():
                found[name] = value.strip()
            else:
                found.pop(name, None)
    return found


def with_kafka_variables(data: Any, env_file: str | None, target: str = "KAFKA") -> Any:
    """For the settings' `before` validator: the KAFKA_* variables of the process
    environment, of the .env file and of explicit `data` (in increasing precedence)
    put under `target`; `BOOTSTRAP_SERVER` taken from KAFKA_BOOTSTRAP_SERVERS when
    only the latter is set. A `KafkaSettings` already under `target` is kept."""
    if not isinstance(data, dict) or isinstance(data.get(target), KafkaSettings):
        return data  # settled already (load_settings' second pass puts a stand-in there)
    dotenv: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        from dotenv import dotenv_values

        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    # pydantic-settings hands over the .env file's extra variables with the explicit
    # ones: a value equal to the file's came from the file, below the environment.
    explicit = {k: v for k, v in data.items() if dotenv.get(k) != v}
    variables = kafka_variables(dotenv, os.environ, explicit)
    data = {**data, target: variables}
    if "BOOTSTRAP_SERVER" not in data and "KAFKA_BOOTSTRAP_SERVERS" in variables:
        data["BOOTSTRAP_SERVER"] = variables["KAFKA_BOOTSTRAP_SERVERS"]
    return data


def kafka_settings(variables: Mapping[str, str], bootstrap_server: str | None = None) -> KafkaSettings:
    """Build and check the settings of `variables` (KAFKA_* names). `bootstrap_server`
    is BOOTSTRAP_SERVER; KAFKA_BOOTSTRAP_SERVERS is its other name (both set to
    different addresses is an error). `client.id` defaults to `chater-gpt-<host name>`.

    Raises KafkaSettingsError naming the variables librdkafka refuses."""
    properties: dict[str, str] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    unknown: list[str] = []
    for name, value in sorted(kafka_variables(variables).items()):
        if _secret_file(name):
            prop = property_name(name.removesuffix("_FILE"))
            if not known_property(prop):
                unknown.append(name)
                continue
            try:
                value = read_secret_file(value)
            except SecretFileError as error:
                problems.append(f"{name}: {error}")
                continue
        else:
            prop = property_name(name)
            if not known_property(prop):
                # Not meant for librdkafka (KAFKA_HEAP_OPTS of a Kafka image, say).
                unknown.append(name)
                continue
            if prop in sources and _secret_file(sources[prop]):
                continue  # the file wins, as OPENAI_API_KEY_FILE does
        if prop in _RESERVED:
            problems.append(f"{name}: not settable ({_RESERVED[prop]})")
            continue
        properties[prop] = value
        sources[prop] = name
    given = properties.pop("bootstrap.servers", None)
    if given and bootstrap_server and given != bootstrap_server:
        problems.append(
            f"BOOTSTRAP_SERVER ({bootstrap_server}) and KAFKA_BOOTSTRAP_SERVERS ({given}) "
            "differ: set one of them"
        )
    if problems:
        raise KafkaSettingsError("\n  ".join(problems))
    if unknown:
        log.warning("KAFKA_* variables that are not librdkafka properties, left out: %s",
                    ", ".join(unknown))
    properties.setdefault("client.id", f"chater-gpt-{socket.gethostname()}")
    _check(properties, sources)
    consumer, producer = _one_kind(properties)
    common = {
        "bootstrap.servers": bootstrap_server or given or "localhost:9092",
        **{k: v for k, v in properties.items() if k not in consumer and k not in producer},
    }
    sources.setdefault("bootstrap.servers", "BOOTSTRAP_SERVER")
    return KafkaSettings(common, consumer, producer, sources)


def _secret_file(name: str) -> bool:
    """KAFKA_<NAME>_FILE holds the path of a file with <NAME>'s secret value, unless
    the name with its `.file` is a librdkafka property itself
    (KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE: a path librdkafka reads)."""
    return (
        name.endswith("_FILE")
        and is_secret(property_name(name.removesuffix("_FILE")))
        and not known_property(property_name(name))
    )


@lru_cache(maxsize=256)
def known_property(prop: str) -> bool:
    """Whether librdkafka has a property `prop` (whatever its value)."""
    try:
        client = Producer({prop: "", "logger": _check_log})
    except KafkaException as error:
        return _UNKNOWN_PROPERTY not in str(error.args[0].str() if error.args and isinstance(
            error.args[0], KafkaError) else error)
    del client
    return True


@lru_cache(maxsize=32)
def _from_environment(bootstrap_server: str, variables: tuple[tuple[str, str], ...]) -> KafkaSettings:
    return kafka_settings(dict(variables), bootstrap_server)


def for_address(kafka: KafkaSettings | str) -> KafkaSettings:
    """`kafka` itself, or for a bare address (the dev kit's and the tests' helpers)
    that address with the process environment's KAFKA_* properties."""
    if isinstance(kafka, KafkaSettings):
        return kafka
    variables = kafka_variables(os.environ)
    variables.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return _from_environment(kafka, tuple(sorted(variables.items())))


def _check(properties: dict[str, str], sources: Mapping[str, str]) -> None:
    """Let librdkafka refuse what it refuses now, not when the worker opens a client:
    a producer and a consumer are made with every property (no bootstrap.servers,
    so they connect nowhere) and dropped."""
    for kind in (Producer, Consumer):
        extra = {"group.id": "settings-check"} if kind is Consumer else {}
        try:
            client = kind({**properties, **extra, "logger": _check_log})
        except KafkaException as error:
            raise KafkaSettingsError(_refusal(error, properties, sources)) from None
        if kind is Consumer:
            client.close()
        del client


def _refusal(error: KafkaException, properties: Mapping[str, str], sources: Mapping[str, str]) -> str:
    message = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
    for prop, value in properties.items():
        if is_secret(prop) and value:
            message = message.replace(value, "**********")
    named = [sources[p] for p in properties if p in sources and re.search(
        rf"(?<![\w.]){re.escape(p)}(?![\w.])", message)]
    if not named:  # under another name (an alias): find the one refused alone
        for prop, value in properties.items():
            try:
                Producer({prop: value, "logger": _check_log})
            except KafkaException:
                if prop in sources:
                    named.append(sources[prop])
    who = ", ".join(named) if named else "KAFKA_* settings"
    return f"{who}: refused by librdkafka: {message}"


def _one_kind(properties: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The consumer-only and the producer-only properties, as librdkafka itself
    tells them apart: a client warns about each property of the other kind."""
    consumer: dict[str, str] = {}
    producer: dict[str, str] = {}
    for prop, value in properties.items():
        if prop in ("client.id", "bootstrap.servers") or prop.startswith(("security.", "ssl.", "sasl.")):
            continue  # common to every client
        if _warned(Producer, prop, value, "is a consumer property"):
            consumer[prop] = value
        elif _warned(Consumer, prop, value, "is a producer property"):
            producer[prop] = value
    return consumer, producer


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _warned(kind: type, prop: str, value: str, warning: str) -> bool:
    lines = _Lines()
    logger = logging.getLogger(f"chater-gpt.kafka-settings-kind.{kind.__name__}")
    logger.propagate = False
    logger.handlers[:] = [lines]
    logger.setLevel(logging.DEBUG)
    try:
        client = kind({prop: value, "logger": logger,
                       **({"group.id": "settings-check"} if kind is Consumer else {})})
        client.poll(0)  # serves the client's log lines
        if kind is Consumer:
            client.close()
        del client
    except KafkaException:
        return False
    finally:
        logger.handlers[:] = []
    return any(warning in line for line in lines.lines)


def admin_config(kafka: KafkaSettings | str) -> dict[str, object]:
    """Settings of an admin client (and of any client only the shared settings fit)."""
    kafka = for_address(kafka)
    return {"log.connection.close": False, **kafka.common}


def reader_config(kafka: KafkaSettings | str, group: str) -> dict[str, object]:
    """A consumer that reads partitions it assigns itself (no offsets committed)."""
    kafka = for_address(kafka)
    return {
        "log.connection.close": False, **kafka.common, **kafka.consumer,
        "group.id": group, "enable.auto.commit": False,
    }


def consumer_config(
    kafka: KafkaSettings | str, group: str, prefetch_bytes: int | None = None
) -> dict[str, object]:
    """`prefetch_bytes`: about how many bytes of records the consumer may fetch ahead
    of the worker (its queue, `queued.max.messages.kbytes`, and one fetch,
    `fetch.max.bytes`; librdkafka's defaults are 64 MiB and 50 MiB); a setting of
    the operator's (KAFKA_*) wins. A record larger than a fetch is fetched all the same."""
    kafka = for_address(kafka)
    defaults: dict[str, object] = {
        "auto.offset.reset": "earliest",
        # A shorter session makes joins and failovers take seconds, not tens of them.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1500,
        "max.poll.interval.ms": 600_000,
        "partition.assignment.strategy": "cooperative-sticky",
        # A broker closing idle connections is routine, not worth a log line.
        "log.connection.close": False,
    }
    if prefetch_bytes is not None:
        defaults["queued.max.messages.kbytes"] = max(prefetch_bytes // 1024, 1)
        # librdkafka refuses a fetch smaller than message.max.bytes (default 1,000,000).
        largest = int(str({**kafka.common, **kafka.consumer}.get("message.max.bytes", 1_000_000)))
        defaults["fetch.max.bytes"] = max(prefetch_bytes, largest)
    if kafka.new_group_protocol:  # the broker decides these (librdkafka refuses them)
        for name in CLASSIC_PROTOCOL_ONLY:
            defaults.pop(name, None)
    return {
        **defaults,
        **kafka.common,
        **kafka.consumer,
        "group.id": group,
        # Offsets are committed by hand, only once the response is produced.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }


def producer_config(kafka: KafkaSettings | str, max_message_bytes: int | None = None) -> dict[str, object]:
    """`max_message_bytes`: the largest record it must be able to produce (librdkafka's
    default is 1,000,000 bytes); the topics' `max.message.bytes` must allow it too."""
    kafka = for_address(kafka)
    config: dict[str, object] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": DEFAULT_COMPRESSION,
        "log.connection.close": False,
        **kafka.common,
        **kafka.producer,
    }
    if max_message_bytes:
        given = int(str(config.get("message.max.bytes", 0)))
        config["message.max.bytes"] = max(given, max_message_bytes)
    return config


def topic_number(kafka: KafkaSettings | str, topic: str, name: str) -> int | None:
    """A numeric setting of the topic (`max.message.bytes`, `retention.ms`…), or None
    when the cluster does not say (no such topic, no permission to describe it, no
    answer within 10 s)."""
    admin = AdminClient(admin_config(kafka))
    try:
        [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
        entry = future.result(timeout=10).get(name)
    except Exception as error:  # best effort: only ever a warning depends on it
        log.debug("%s of %s unknown: %s", name, topic, error)
        return None
    try:
        return int(entry.value) if entry is not None else None
    except (TypeError, ValueError):
        return None


def partition_count(kafka: KafkaSettings | str, topic: str) -> int | None:
    """How many partitions the topic has; None when it does not exist (or no
    broker answered within 10 s)."""
    admin = AdminClient(admin_config(kafka))
    try:
        about = admin.list_topics(topic, timeout=10).topics.get(topic)
    except KafkaException as error:
        log.debug("partitions of %s unknown: %s", topic, error)
        return None
    if about is None or about.error is not None:
        return None
    return len(about.partitions)


def ensure_topics(
    kafka: KafkaSettings | str,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create the topics that do not exist yet, with `config` (topic settings such
    as `max.message.bytes`); existing ones are left alone."""
    admin = AdminClient(admin_config(kafka))
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(n, num_partitions=partitions, config=dict(config or {}))
        for n in names if n not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
