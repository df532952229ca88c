"""Load benchmark: the real worker process against the real broker and a local model server.

    python tests/load/load_test.py --concurrent=1000 --requests=5000 \
        --conversations=2500 --latency=1.0 --store=sqlite,postgres

It starts the embedded broker, the OpenAI-compatible test server (with the given
model latency) and, for --store=postgres, a PostgreSQL server with durable
commits; then, per store, a `chater-gpt worker` process. A closed-loop client
keeps --concurrent requests outstanding (or, with --rate, sends at that pace)
and reads the responses. It prints throughput, end-to-end latency, the overhead
the service adds to the model's time, the worker's CPU per request, its peak RSS
and model calls per request, then the same load through two baselines on the
same parts: a bare
confluent-kafka consume → produce relay, and a bare AsyncOpenAI loop. Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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
from devkit.embedded_broker import CLIENT_ENVIRONMENT, EmbeddedBroker, free_loopback_port  # noqa: E402
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
          concurrent: int, rate: float | None, timeout: float,
          progress=None) -> tuple[float, dict[str, float], dict[str, dict]]:
    """Send the records, keep `concurrent` outstanding, return (seconds, latency by key, bodies);
    `progress(answered)` is called after each batch of answers."""
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
        if progress is not None:
            progress(len(latency))
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


def run_service(args, broker, model, store: str, postgres: PostgresServer | None, workdir: Path,
                extra_env: dict[str, str] | None = None, bodies=None, concurrent: int | None = None,
                name: str | None = None, checkpoints=None, keep_sent: bool = True) -> dict:
    """One worker process under load; `bodies(run)` gives the requests (default: requests_for).
    `checkpoints(pid, store_size)` gives a `progress` callback for `drive` (see longrun);
    `keep_sent=False` leaves out the bodies the model server received (too many to fetch)."""
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
    env = {**os.environ, **CLIENT_ENVIRONMENT, **topics,
           "BOOTSTRAP_SERVER": broker.bootstrap_server, "CONSUMER_GROUP": f"chater-gpt-{run}",
           "DATABASE_URL": database_url, "SECRET_KEY": "load-test-secret",
           "OPENAI_API_KEY": "load-test", "OPENAI_BASE_URL": model.base_url,
           "MODEL_PROVIDER": "openai", "REQUESTS_PER_MINUTE": "0", "MAX_RETRIES": "0",
           "DAILY_TOKEN_LIMIT": str(10**12), "MAX_IN_FLIGHT": str(args.max_in_flight),
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           # Served as in production (its checks run every second), on a port of its own.
           "HEALTH_PORT": str(free_loopback_port()), **(extra_env or {})}
    workers, pids = [], []
    for number in range(args.workers):  # --workers: members of one consumer group
        log = open(workdir / f"{run}.{number}.log", "wb")
        command = [sys.executable, "-m", "entrypoints.cli", "worker"]
        if args.profile:  # py-spy's collapsed stacks of the worker, for finding what limits it
            command = ["py-spy", "record", "--format", "raw", "--rate", "200", "--nonblocking",
                       "-o", f"{args.profile}.{store}.{number}.txt", "--", *command]
        worker_env = {**env, "HEALTH_PORT": str(free_loopback_port())} if number else env
        workers.append(subprocess.Popen(command, cwd=workdir, env=worker_env, stdout=log,
                                        stderr=log, stdin=subprocess.DEVNULL))
        # Under --profile the worker is py-spy's child: its figures, not the profiler's.
        pids.append(worker_pid(workers[-1], profiled=bool(args.profile)))
    pid = pids[0]
    try:
        # Warm up: the group join, the store's tables, the model client's pool.
        warm = [(f"{run}-warm-{n}", json.dumps({"user_email": f"warm{n}@load.example",
                                                  "message": "warm up"}).encode()) for n in range(20)]
        _, warmed, _ = drive(broker.bootstrap_server, topics["REQUEST_TOPIC"],
                             topics["RESPONSE_TOPIC"], warm, 20, None, 90)
        if len(warmed) < len(warm):
            raise RuntimeError(f"the worker did not answer the warm-up; see {workdir}")
        model.reset()
        model.set_latency(args.latency)
        cpu_before = sum(read_cpu_seconds(p) for p in pids)
        progress = checkpoints(pid, lambda: store_size(store, database_url, postgres)) \
            if checkpoints else None
        elapsed, latency, answers = drive(
            broker.bootstrap_server, topics["REQUEST_TOPIC"], topics["RESPONSE_TOPIC"],
            (bodies or (lambda run: requests_for(args, run)))(run), concurrent or args.concurrent,
            args.rate, args.timeout, progress)
        cpu_seconds = sum(read_cpu_seconds(p) for p in pids) - cpu_before
        peak_rss_kib = max(read_peak_rss(p) for p in pids)
        timings = model.timings()
        sent = model.requests() if keep_sent else []
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
    model_time = {text.split(" ", 1)[0]: answered - received for text, received, answered in timings}
    overhead = [latency[key] - model_time[key] for key in latency if key in model_time]
    errors = sum("error" in body for body in answers.values())
    return {"name": name or f"service ({store})", "elapsed": elapsed, "done": len(latency),
            "latency": list(latency.values()), "overhead": overhead, "errors": errors,
            "model_calls": len(timings), "peak_rss_mib": peak_rss_kib / 1024,
            "cpu_seconds": cpu_seconds,
            "answers": answers, "sent": sent}


# Cheaper answers: the response cache, and context compaction ----------------------


def repeating_requests(count: int, repeat: float, seed: int = 7):
    """`count` questions, each a new conversation; a share `repeat` of them asks again
    a question asked before (at temperature 0, so the answer may be shared)."""
    def bodies(run: str, temperature: float = 0.0) -> list[tuple[str, bytes]]:
        rng = random.Random(seed)
        asked: list[str] = []
        out = []
        for i in range(count):
            if asked and rng.random() < repeat:
                question = rng.choice(asked)
            else:
                question = f"question {len(asked)}: what is {len(asked)} squared, and why?"
                asked.append(question)
            body = {"user_email": f"user{i % 500}@load.example", "conversation_id": f"{run}-{i}",
                    "message": question, "max_tokens": 100, "temperature": temperature}
            out.append((f"{run}-{i}", json.dumps(body).encode()))
        return out
    return bodies


def run_cache_scenario(args, broker, model, redis_url: str, workdir: Path) -> None:
    """Hit rate, model calls per request and cost per 1,000 requests, with and without
    the cache, on a workload where --repeat of the requests ask again."""
    bodies = repeating_requests(args.requests, args.repeat)
    questions = [json.loads(value)["message"] for _, value in bodies("count")]
    repeats = 1 - len(set(questions)) / len(questions)
    runs = [
        ("no sharing (temperature 0.7)", {}, lambda run: bodies(run, 0.7)),
        ("single-flight only (no REDIS_URL)", {}, bodies),
        ("Redis cache + single-flight", {"REDIS_URL": redis_url, "CACHE_SCOPE": "global"}, bodies),
    ]
    print(f"\ncache: {args.requests} requests, {repeats:.1%} of them repeat an earlier "
          f"question (new conversations, CACHE_SCOPE=global), {args.concurrent} outstanding, "
          f"model latency {args.latency}s, store sqlite")
    print(f"  {'run':36} {'hit rate':>9} {'calls/request':>14} {'cost per 1,000':>15} {'req/s':>8}")
    for name, env, make in runs:
        result = run_service(args, broker, model, "sqlite", None, workdir, env, make, name=name)
        answers = result["answers"].values()
        hits = sum(1 for a in answers if a.get("cached"))
        cost = sum(a.get("cost_usd") or 0.0 for a in answers)
        done = max(result["done"], 1)
        print(f"  {name:36} {hits / done:9.1%} {result['model_calls'] / done:14.3f} "
              f"${cost / done * 1000:14.5f} {result['done'] / result['elapsed']:8.1f}"
              + (f"  ({result['errors']} errors)" if result["errors"] else ""))


FILLER = ("the quarterly figures for the northern region came in below plan because two large "
          "customers delayed their orders and the warehouse move took longer than expected")


def conversation_requests(conversations: int, turns: int):
    """`turns` turns in each of `conversations` conversations, about 40 words each."""
    def bodies(run: str) -> list[tuple[str, bytes]]:
        out = []
        for turn in range(turns):
            for c in range(conversations):
                key = f"{run}-{c}-{turn}"
                body = {"user_email": f"user{c}@load.example", "conversation_id": run,
                        "message": f"turn {turn}: {FILLER}; what should we do next?",
                        "max_tokens": 300}
                out.append((key, json.dumps(body).encode()))
        return out
    return bodies


LONG_MESSAGE = " ".join([FILLER] * 12)  # about 2,000 characters


def run_longrun_scenario(args, broker, model, workdir: Path, postgres: PostgresServer | None,
                         stores: list[str]) -> None:
    """Conversations of many turns with long messages: the worker's memory must stay flat
    after warm-up and the store grow linearly (not with the square of the turns)."""
    conversations, turns = args.longrun_conversations, args.longrun_turns

    def bodies(run: str) -> list[tuple[str, bytes]]:
        out = []
        for turn in range(turns):
            for c in range(conversations):
                key = f"{run}-{c}-{turn}"  # first in the message: the overhead is measured by it
                body = {"user_email": f"user{c}@longrun.example", "conversation_id": run,
                        "message": f"{key} turn {turn}: {LONG_MESSAGE}", "max_tokens": 300}
                out.append((key, json.dumps(body).encode()))
        return out

    total = conversations * turns
    print(f"\nlongrun: {conversations} conversations of {turns} turns, messages of "
          f"{len(LONG_MESSAGE)} characters, one turn of each conversation outstanding at a time, "
          f"model latency {args.latency}s")
    for store in stores:
        marks: list[tuple[int, float, int]] = []  # answered, RSS KiB, store bytes

        def checkpoints(pid, size):
            wanted = [total * q // 4 for q in (1, 2, 3, 4)]

            def progress(answered: int) -> None:
                if len(marks) < len(wanted) and answered >= wanted[len(marks)]:
                    marks.append((answered, read_rss(pid), size()))
            return progress

        result = run_service(args, broker, model, store, postgres, workdir, {}, bodies,
                             concurrent=conversations, name=f"longrun ({store})",
                             checkpoints=checkpoints, keep_sent=False)
        report(result)
        print(f"  {'answered':>10} {'RSS MiB':>9} {'store MiB':>10}")
        for answered, rss, size in marks:
            print(f"  {answered:10d} {rss / 1024:9.1f} {size / 2**20:10.1f}")
        if len(marks) == 4:
            print(f"  store at the end / at half-time: {marks[3][2] / max(marks[1][2], 1):.2f}"
                  f"   RSS at the end / at a quarter: {marks[3][1] / marks[0][1]:.2f}")


def run_context_scenario(args, broker, model, workdir: Path) -> None:
    """Prompt tokens per request on long conversations: truncate vs summarize (and,
    for scale, the whole history sent every time)."""
    from application.compaction import SUMMARY_INSTRUCTIONS
    from tests.support.fake_openai import prompt_tokens

    summary_start = SUMMARY_INSTRUCTIONS.split("{")[0]
    turns, conversations = args.turns, args.context_conversations
    runs = [
        ("truncate", {"CONTEXT_STRATEGY": "truncate"}),
        ("summarize", {"CONTEXT_STRATEGY": "summarize"}),
        ("whole history (no window)", {"CONTEXT_STRATEGY": "truncate", "CONTEXT_MAX_TURNS": "1000",
                                       "CONTEXT_MAX_TOKENS": "1000000"}),
    ]
    print(f"\ncontext: {conversations} conversations of {turns} turns (~45-word messages, "
          f"echoed replies), CONTEXT_MAX_TOKENS 8000 and CONTEXT_MAX_TURNS 10 unless said; "
          f"tokens as the model server counts them")
    print(f"  {'strategy':28} {'prompt tok/request':>19} {'of which summaries':>19} "
          f"{'calls/request':>14} {'turns in last call':>19}")
    for name, env in runs:
        result = run_service(args, broker, model, "sqlite", None, workdir, env,
                             conversation_requests(conversations, turns), concurrent=conversations,
                             name=name)
        sent = [body for body in result["sent"] if isinstance(body, dict)]
        summaries = [b for b in sent if str(b["messages"][0].get("content", "")).startswith(summary_start)]
        total = sum(prompt_tokens(b["messages"]) for b in sent)
        summary_tokens = sum(prompt_tokens(b["messages"]) for b in summaries)
        done = max(result["done"], 1)
        last = [b for b in sent if b not in summaries][-1]
        carried = sum(1 for m in last["messages"] if m["role"] == "assistant")
        print(f"  {name:28} {total / done:19.1f} {summary_tokens / done:19.1f} "
              f"{len(sent) / done:14.3f} {carried:19d}"
              + (f"  ({result['errors']} errors)" if result["errors"] else ""))


def worker_pid(process: subprocess.Popen, profiled: bool) -> int:
    """The worker's pid: the process itself, or under py-spy its child."""
    if not profiled:
        return process.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no worker")


def read_rss(pid: int) -> float:
    """VmRSS: the resident memory of the process now, in KiB."""
    return _status_kib(pid, "VmRSS")


def store_size(store: str, database_url: str, postgres: PostgresServer | None) -> int:
    """Bytes the event store takes on disk: the SQLite files, or the database's size."""
    if store == "sqlite":
        path = Path(database_url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    if store == "postgres" and postgres is not None:
        import psycopg
        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as db:
            return int(db.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    return 0


def read_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_peak_rss(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had, in KiB."""
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
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
                            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"c-{i}"}]}) as r:
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
        if "cpu_seconds" in result:
            cpu_ms = 1000 * result["cpu_seconds"] / max(result["done"], 1)
            print(f"  worker CPU/request  {cpu_ms:8.2f} ms  (all worker processes; 1 / it: "
                  f"{1000 / cpu_ms if cpu_ms else 0:.0f} requests/s per core)")
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
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes in one consumer group (CPU summed, RSS of the largest)")
    parser.add_argument("--rate", type=float, default=None, help="open loop: send at this many per second")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--profile", metavar="PREFIX", help="profile the worker with py-spy")
    parser.add_argument("--scenario", default="throughput",
                        help="throughput, cache (hit rate and cost with and without the cache), "
                             "context (truncate vs summarize), longrun (memory and store size over "
                             "long conversations, per --store), or several: cache,context")
    parser.add_argument("--repeat", type=float, default=0.3,
                        help="cache: the share of requests that repeat an earlier one")
    parser.add_argument("--turns", type=int, default=40, help="context: turns per conversation")
    parser.add_argument("--context-conversations", type=int, default=25,
                        help="context: conversations run side by side")
    parser.add_argument("--longrun-conversations", type=int, default=300,
                        help="longrun: conversations run side by side")
    parser.add_argument("--longrun-turns", type=int, default=60, help="longrun: turns per conversation")
    args = parser.parse_args()
    args.conversations = args.conversations or args.requests
    stores = [s.strip() for s in args.store.split(",") if s.strip()]
    scenarios = {s.strip() for s in args.scenario.split(",") if s.strip()}
    if scenarios - {"throughput"}:
        return run_scenarios(args, scenarios, stores)

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


def run_scenarios(args, scenarios: set[str], stores: list[str]) -> None:
    from tests.support.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="chater-load-") as tmp, EmbeddedBroker() as broker, \
            FakeOpenAIServer(latency=args.latency) as model:
        if "cache" in scenarios:
            redis = RedisServer()
            redis.start()
            try:
                run_cache_scenario(args, broker, model, redis.url, Path(tmp))
            finally:
                redis.stop()
        if "context" in scenarios:
            run_context_scenario(args, broker, model, Path(tmp))
        if "longrun" in scenarios:
            postgres = PostgresServer(durable=True).start() if "postgres" in stores else None
            try:
                run_longrun_scenario(args, broker, model, Path(tmp), postgres, stores)
            finally:
                if postgres:
                    postgres.stop()


if __name__ == "__main__":
    main()
