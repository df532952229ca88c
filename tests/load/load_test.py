"""Load benchmark: the real worker process against the real broker and a local model server.

    python tests/load/load_test.py --concurrent=1000 --requests=5000 \
        --conversations=2500 --latency=1.0 --store=sqlite,postgres

It starts the embedded broker, the OpenAI-compatible test server (with the given
model latency) and, for --store=postgres, a PostgreSQL server with durable
commits; then, per store, a `chater-gpt worker` process. A closed-loop client
keeps --concurrent requests outstanding (or, with --rate, sends at that pace)
and reads the responses. It prints throughput, end-to-end latency, the overhead
the service adds to the model's time, the worker's peak RSS and model calls per
request, then the same load through two baselines on the same parts: a bare
confluent-kafka consume → produce relay, and a bare AsyncOpenAI loop. Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from adapters.kafka import ensure_topics  # noqa: E402
from adapters.tansu_broker import EmbeddedBroker, free_loopback_port  # noqa: E402
from tests.support.fake_openai import FakeOpenAIServer  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# The client ----------------------------------------------------------------------


def drive(bootstrap: str, request_topic: str, response_topic: str, bodies: list[tuple[str, bytes]],
          concurrent: int, rate: float | None, timeout: float) -> tuple[float, dict[str, float], dict[str, dict]]:
    """Send the records, keep `concurrent` outstanding, return (seconds, latency by key, bodies)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "log.connection.close": False})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"load-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5,
                         "log.connection.close": False})
    consumer.assign([TopicPartition(response_topic, 0, 0)])
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    answers: dict[str, dict] = {}
    pending = iter(bodies)
    outstanding = 0
    started = time.perf_counter()
    deadline = started + timeout

    def send(count: int) -> int:
        sent = 0
        for key, value in pending:
            sent_at[key] = time.perf_counter()
            producer.produce(request_topic, value, key.encode())
            sent += 1
            if sent >= count:
                break
        producer.poll(0)
        return sent

    outstanding += send(concurrent if rate is None else 1)
    while len(latency) < len(bodies) and time.perf_counter() < deadline:
        if rate is not None:
            due = int((time.perf_counter() - started) * rate) + 1 - len(sent_at)
            if due > 0 and outstanding < concurrent:
                outstanding += send(min(due, concurrent - outstanding))
        for message in consumer.consume(1000, 0.005):
            if message.error():
                continue
            key = message.key().decode()
            if key in sent_at and key not in latency:
                latency[key] = time.perf_counter() - sent_at[key]
                answers[key] = json.loads(message.value())
                outstanding -= 1
                if rate is None:
                    outstanding += send(1)
    elapsed = time.perf_counter() - started
    producer.flush(5)
    consumer.close()
    return elapsed, latency, answers


def requests_for(args: argparse.Namespace, run: str) -> list[tuple[str, bytes]]:
    """Request i belongs to conversation i % C: every conversation's turns come in order."""
    bodies = []
    for i in range(args.requests):
        conversation = i % args.conversations
        key = f"{run}-{i}"
        body = {"user_email": f"user{conversation}@load.example", "conversation_id": run,
                "message": f"{key} turn {i // args.conversations + 1}: what is {i} squared?",
                "max_tokens": 100}
        bodies.append((key, json.dumps(body).encode()))
    return bodies


# The service ---------------------------------------------------------------------


def run_service(args, broker, model, store: str, postgres: PostgresServer | None, workdir: Path) -> dict:
    run = f"{store}-{uuid.uuid4().hex[:6]}"
    topics = {"REQUEST_TOPIC": f"gpt-send-{run}", "RESPONSE_TOPIC": f"gpt-response-{run}",
              "DLQ_TOPIC": f"gpt-send-{run}.dlq"}
    ensure_topics(broker.bootstrap_server, topics.values())
    if store == "postgres":
        assert postgres is not None
        database = f"load_{uuid.uuid4().hex[:6]}"
        postgres.create_database(database)
        database_url = postgres.url(database)
    elif store == "memory":  # no store cost at all: isolates what the rest adds
        database_url = "memory://"
    else:
        database_url = f"sqlite:///{workdir}/{run}.sqlite"
    env = {**os.environ, **topics,
           "BOOTSTRAP_SERVER": broker.bootstrap_server, "CONSUMER_GROUP": f"chater-gpt-{run}",
           "DATABASE_URL": database_url, "SECRET_KEY": "load-test-secret",
           "OPENAI_API_KEY": "load-test", "OPENAI_BASE_URL": model.base_url,
           "MODEL_PROVIDER": "openai", "REQUESTS_PER_MINUTE": "0", "MAX_RETRIES": "0",
           "DAILY_TOKEN_LIMIT": str(10**12), "MAX_IN_FLIGHT": str(args.max_in_flight),
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           # Served as in production (its checks run every second), on a port of its own.
           "HEALTH_PORT": str(free_loopback_port())}
    log = open(workdir / f"{run}.log", "wb")
    command = [sys.executable, "-m", "entrypoints.cli", "worker"]
    if args.profile:  # py-spy's collapsed stacks of the worker, for finding what limits it
        command = ["py-spy", "record", "--format", "raw", "--rate", "200", "--nonblocking",
                   "-o", f"{args.profile}.{store}.txt", "--", *command]
    worker = subprocess.Popen(command, cwd=workdir,
                              env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        # Warm up: the group join, the store's tables, the model client's pool.
        warm = [(f"{run}-warm-{n}", json.dumps({"user_email": f"warm{n}@load.example",
                                                  "message": "warm up"}).encode()) for n in range(20)]
        _, warmed, _ = drive(broker.bootstrap_server, topics["REQUEST_TOPIC"],
                             topics["RESPONSE_TOPIC"], warm, 20, None, 90)
        if len(warmed) < len(warm):
            raise RuntimeError(f"the worker did not answer the warm-up; see {log.name}")
        model.reset()
        model.set_latency(args.latency)
        elapsed, latency, answers = drive(
            broker.bootstrap_server, topics["REQUEST_TOPIC"], topics["RESPONSE_TOPIC"],
            requests_for(args, run), args.concurrent, args.rate, args.timeout)
        peak_rss_kib = read_peak_rss(worker.pid)
        timings = model.timings()
    finally:
        worker.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
    model_time = {text.split(" ", 1)[0]: answered - received for text, received, answered in timings}
    overhead = [latency[key] - model_time[key] for key in latency if key in model_time]
    errors = sum("error" in body for body in answers.values())
    return {"name": f"service ({store})", "elapsed": elapsed, "done": len(latency),
            "latency": list(latency.values()), "overhead": overhead, "errors": errors,
            "model_calls": len(timings), "peak_rss_mib": peak_rss_kib / 1024}


def read_peak_rss(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float("nan")


# Baselines -----------------------------------------------------------------------


def run_relay(args, broker, workdir: Path) -> dict:
    """Baseline 1: the least a Kafka worker does, consume → produce, same client load."""
    run = f"relay-{uuid.uuid4().hex[:6]}"
    source, sink = f"{run}-in", f"{run}-out"
    ensure_topics(broker.bootstrap_server, [source, sink])
    relay = subprocess.Popen([sys.executable, __file__, "--relay", broker.bootstrap_server, source, sink],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=workdir)
    try:
        assert relay.stdout is not None
        relay.stdout.readline()  # "ready"
        bodies = requests_for(args, run)
        elapsed, latency, _ = drive(broker.bootstrap_server, source, sink, bodies,
                                    args.concurrent, args.rate, args.timeout)
    finally:
        relay.terminate()
        relay.wait(30)
    return {"name": "kafka relay", "elapsed": elapsed, "done": len(latency),
            "latency": list(latency.values())}


def relay_main(bootstrap: str, source: str, sink: str) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{source}-relay",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "session.timeout.ms": 6000, "fetch.wait.max.ms": 10,
                         "log.connection.close": False})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "log.connection.close": False})
    ready = False

    def assigned(_consumer, _partitions):
        nonlocal ready
        ready = True

    consumer.subscribe([source], on_assign=assigned)
    while not ready:
        consumer.poll(0.1)
    print("ready", flush=True)
    while True:
        messages = consumer.consume(500, 0.05)
        for message in messages:
            if not message.error():
                producer.produce(sink, message.value(), message.key())
        producer.poll(0)
        if messages:
            producer.flush()
            try:
                consumer.commit(asynchronous=True)
            except Exception:
                pass


def run_bare_sdk(args, model: FakeOpenAIServer, stock: bool) -> dict:
    """Baseline 2: AsyncOpenAI alone at the same concurrency: no Kafka, no store."""
    out = subprocess.run(
        [sys.executable, __file__, "--bare-sdk", model.base_url, str(args.concurrent),
         str(args.requests), "stock" if stock else "service"],
        capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    label = "bare AsyncOpenAI (chat.completions.create)" if stock else "bare AsyncOpenAI (as the service calls it)"
    return {"name": label, **result}


def bare_sdk_main(base_url: str, concurrent: int, requests: int, mode: str) -> None:
    import httpx2
    from openai import AsyncOpenAI, DefaultAioHttpClient

    from adapters.openai_model import OpenAIModel
    from application.ports import ChatMessage, ModelCall

    async def main() -> None:
        if mode == "stock":
            client = AsyncOpenAI(api_key="load", base_url=base_url, max_retries=0,
                                 http_client=DefaultAioHttpClient(limits=httpx2.Limits(
                                     max_connections=concurrent, max_keepalive_connections=concurrent)))

            async def call(i: int) -> None:
                await client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=100,
                    messages=[{"role": "user", "content": f"bare-{i} what is {i} squared?"}])
        else:
            adapter = OpenAIModel("load", base_url, max_retries=0, max_connections=concurrent)

            async def call(i: int) -> None:
                await adapter.complete(ModelCall("gpt-4o-mini", [ChatMessage(
                    "user", f"bare-{i} what is {i} squared?")], 100, 0.7))

        numbers = iter(range(requests))
        latency: list[float] = []

        async def loop() -> None:
            for i in numbers:
                began = time.perf_counter()
                await call(i)
                latency.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrent)))
        elapsed = time.perf_counter() - began
        print(json.dumps({"elapsed": elapsed, "done": len(latency), "latency": latency}))

    asyncio.run(main())


def model_server_ceiling(args, model: FakeOpenAIServer) -> dict:
    """The model server's own limit, driven by a light aiohttp client at the same concurrency."""
    out = subprocess.run([sys.executable, __file__, "--ceiling", model.base_url, str(args.concurrent),
                          str(max(args.requests, 2000))], capture_output=True, text=True, check=True)
    return {"name": "model server ceiling (aiohttp client)", **json.loads(out.stdout.strip().splitlines()[-1])}


def ceiling_main(base_url: str, concurrent: int, requests: int) -> None:
    import aiohttp

    async def main() -> None:
        numbers = iter(range(requests))
        latency: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrent)) as session:
            async def loop() -> None:
                for i in numbers:
                    began = time.perf_counter()
                    async with session.post(f"{base_url}/chat/completions", json={
                            "model": "m", "messages": [{"role": "user", "content": f"c-{i}"}]}) as r:
                        await r.read()
                    latency.append(time.perf_counter() - began)
            began = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrent)))
            print(json.dumps({"elapsed": time.perf_counter() - began, "done": len(latency),
                              "latency": latency}))

    asyncio.run(main())


# Report --------------------------------------------------------------------------


def report(result: dict) -> float:
    throughput = result["done"] / result["elapsed"] if result["elapsed"] else 0.0
    lat = result["latency"]
    print(f"\n{result['name']}")
    print(f"  answered            {result['done']}" + (f"  ({result['errors']} errors)" if "errors" in result else ""))
    print(f"  throughput          {throughput:8.1f} requests/s")
    print(f"  end-to-end p50/p95/p99 {ms(percentile(lat, 50))} {ms(percentile(lat, 95))} {ms(percentile(lat, 99))}")
    if "overhead" in result:
        over = result["overhead"]
        print(f"  overhead p50/p99    {ms(percentile(over, 50))} {ms(percentile(over, 99))}"
              f"   (end-to-end minus the model server's time; mean {ms(statistics.fmean(over) if over else 0)})")
        print(f"  worker peak RSS     {result['peak_rss_mib']:8.1f} MiB")
        print(f"  model calls/request {result['model_calls'] / max(result['done'], 1):8.3f}")
    return throughput


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--relay":
        return relay_main(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-sdk":
        return bare_sdk_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    if len(sys.argv) > 1 and sys.argv[1] == "--ceiling":
        return ceiling_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=100, help="requests outstanding at once")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=None,
                        help="requests are spread over this many conversations (default: all distinct)")
    parser.add_argument("--latency", type=float, default=0.0, help="model latency in seconds")
    parser.add_argument("--store", default="sqlite",
                        help="sqlite, postgres, memory (no store cost), or several: sqlite,postgres")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=None, help="open loop: send at this many per second")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--profile", metavar="PREFIX", help="profile the worker with py-spy")
    args = parser.parse_args()
    args.conversations = args.conversations or args.requests
    stores = [s.strip() for s in args.store.split(",") if s.strip()]

    print(f"load: {args.requests} requests over {args.conversations} conversations, "
          f"{args.concurrent} outstanding{f', {args.rate:.0f}/s' if args.rate else ''}, "
          f"model latency {args.latency}s, MAX_IN_FLIGHT {args.max_in_flight}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="chater-load-") as tmp, EmbeddedBroker() as broker, \
            FakeOpenAIServer(latency=args.latency) as model:
        workdir = Path(tmp)
        postgres = PostgresServer(durable=True).start() if "postgres" in stores else None
        try:
            results = [run_service(args, broker, model, store, postgres, workdir) for store in stores]
        finally:
            if postgres:
                postgres.stop()
        service = [report(r) for r in results]
        if args.skip_baselines:
            return
        model.reset()
        model.set_latency(args.latency)
        relay = report(run_relay(args, broker, workdir))
        bare = report(run_bare_sdk(args, model, stock=False))
        stock = report(run_bare_sdk(args, model, stock=True))
        ceiling = report(model_server_ceiling(args, model))
        print("\nthroughput as a share of each baseline")
        for result, throughput in zip(results, service):
            print(f"  {result['name']:18} relay {throughput / relay:6.1%}   bare SDK {throughput / bare:6.1%}"
                  f"   stock SDK {throughput / stock:6.1%}   slower baseline {throughput / min(relay, bare):6.1%}"
                  f"   model server ceiling {throughput / ceiling:6.1%}")


if __name__ == "__main__":
    main()
