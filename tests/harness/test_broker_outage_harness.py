"""Tests of the broker-outage harness: Tansu behind a TCP proxy that can be cut.

They prove that a cut looks like a broker restart to real librdkafka clients
(connections reset, connects refused, nothing delivered) and that the same
clients carry on by themselves once the proxy is restored, with the broker's
topics and offsets intact.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from adapters.kafka import consumer_config, ensure_topics, producer_config
from tests.support.broker_outage import ProxiedBroker, TcpProxy

pytestmark = pytest.mark.integration

# Clients must be back within this after restore.  Measured: ~1-2 s for a
# producer, ~2-3 s for a group consumer (also with librdkafka defaults).
RECONNECT_DEADLINE = 10.0


@pytest.fixture
def proxied_broker() -> Iterator[ProxiedBroker]:
    """A private Tansu broker behind its own proxy (a cut must not hit other tests)."""
    broker = ProxiedBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _poll_values(consumer: Consumer, wanted: set[bytes], timeout: float) -> list[bytes]:
    """Poll until every value in ``wanted`` was seen or ``timeout`` runs out."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not wanted <= set(seen) and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error() is not None:
            # Transport errors during an outage are informational: librdkafka retries.
            assert not message.error().fatal(), message.error()
            continue
        seen.append(message.value())
    return seen


class _Echo(socketserver.BaseRequestHandler):
    """Echo server handler that records resets (the proxy must reset both sides)."""

    resets: list[str] = []

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            self.resets.append("reset")


def test_proxy_cut_resets_connections_and_refuses_new_ones() -> None:
    """The proxy alone, against an echo server: what a cut does at the socket level."""
    _Echo.resets.clear()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    proxy = TcpProxy(server.server_address[1])
    try:
        proxy.start()
        port = proxy.listen_port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x" * 1_000_000)
            received = 0
            while received < 1_000_000:
                received += len(conn.recv(1 << 20))

            proxy.cut()
            assert proxy.is_cut and proxy.aborted == 1
            with pytest.raises(ConnectionResetError):
                conn.recv(16)
            deadline = time.monotonic() + 5
            while not _Echo.resets and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _Echo.resets, "the upstream side was not reset"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()

        proxy.restore()
        assert proxy.listen_port == port and not proxy.is_cut
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"back")
            assert conn.recv(16) == b"back"
        assert proxy.accepted == 2
    finally:
        proxy.stop()
        proxy.stop()  # idempotent
        server.shutdown()
        server.server_close()


def test_round_trip_through_the_proxy(proxied_broker: ProxiedBroker) -> None:
    """Tansu accepts an advertised port that differs from the one it listens on."""
    bootstrap = proxied_broker.bootstrap_server
    assert bootstrap == proxied_broker.proxy.address != proxied_broker.broker_address
    topic = _unique("outage")
    ensure_topics(bootstrap, [topic])

    producer = Producer({"bootstrap.servers": bootstrap})
    # Tansu advertises the proxy, so clients never bypass it after bootstrap.
    brokers = producer.list_topics(timeout=10).brokers.values()
    assert [(b.host, b.port) for b in brokers] == [("127.0.0.1", proxied_broker.proxy.listen_port)]
    sent = [b"first", b"second", b"third"]
    for value in sent:
        producer.produce(topic, value=value)
    assert producer.flush(10) == 0
    producer.close()

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": _unique("group"),
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,  # the default 45 s makes Tansu's group join take ~23 s
    })
    try:
        consumer.subscribe([topic])
        assert _poll_values(consumer, set(sent), timeout=30) == sent
    finally:
        consumer.close()
    assert proxied_broker.proxy.accepted >= 2


def _librdkafka_defaults(bootstrap: str, group: str) -> tuple[dict, dict]:
    """Reconnect behaviour as shipped, to know what any client gets for free."""
    consumer = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,  # join speed only; reconnect settings stay default
    }
    return {"bootstrap.servers": bootstrap}, consumer


def _worker_config(bootstrap: str, group: str) -> tuple[dict, dict]:
    """What the worker really runs with (idempotent producer, manual commits)."""
    return producer_config(bootstrap), consumer_config(bootstrap, group)


@pytest.mark.parametrize(
    "configs", [_librdkafka_defaults, _worker_config], ids=["defaults", "worker-config"]
)
def test_clients_reconnect_by_themselves_after_an_outage(
    proxied_broker: ProxiedBroker, configs
) -> None:
    """A cut must look like a broker restart, and the same clients must recover unaided."""
    bootstrap = proxied_broker.bootstrap_server
    proxy = proxied_broker.proxy
    topic = _unique("outage")
    ensure_topics(bootstrap, [topic])
    producer_conf, consumer_conf = configs(bootstrap, _unique("group"))
    producer = Producer(producer_conf)
    consumer = Consumer(consumer_conf)
    try:
        consumer.subscribe([topic])
        producer.produce(topic, value=b"before")
        assert producer.flush(10) == 0
        assert _poll_values(consumer, {b"before"}, timeout=30) == [b"before"]

        deliveries: list[tuple[KafkaError | None, Message]] = []
        with proxied_broker.down():
            assert proxy.aborted >= 2  # the producer's and the consumer's connections
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=1).close()

            producer.produce(
                topic, value=b"during", on_delivery=lambda e, m: deliveries.append((e, m))
            )
            assert producer.flush(1.5) == 1  # still queued: not delivered, not failed
            assert deliveries == []
            assert _poll_values(consumer, {b"during"}, timeout=0.5) == []
            accepted_while_down = proxy.accepted

        restored = time.monotonic()
        assert producer.flush(RECONNECT_DEADLINE) == 0, "producer did not reconnect"
        producer_back = time.monotonic() - restored
        [(error, message)] = deliveries
        assert error is None and message.value() == b"during"

        producer.produce(topic, value=b"after")
        assert producer.flush(RECONNECT_DEADLINE) == 0
        seen = _poll_values(consumer, {b"during", b"after"}, timeout=RECONNECT_DEADLINE)
        consumer_back = time.monotonic() - restored
        # The offset of "before" may not be committed yet: it can come again.
        assert [v for v in seen if v != b"before"] == [b"during", b"after"], seen
        assert proxy.accepted > accepted_while_down
        print(f"back after restore: producer {producer_back:.2f}s, consumer {consumer_back:.2f}s")
    finally:
        consumer.close()
        producer.close()
