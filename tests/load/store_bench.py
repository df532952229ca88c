"""The use case and its store alone: ChatService with an instant model, no Kafka, no HTTP.

    python tests/load/store_bench.py --concurrent=100 --requests=3000 [--database-url=...]

Measures what the bookkeeping costs per request (conversation read, two
group-committed writes, the budget lease, token counting): requests/s, and how
many transactions the group commit needed. Default store: a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.event_store import event_store_env  # noqa: E402
from adapters.tiktoken_counter import TiktokenCounter  # noqa: E402
from adapters.event_store import ChatRecords  # noqa: E402
from application.contract import ChatRequest  # noqa: E402
from tests.unit.fakes import make_service  # noqa: E402


async def bench(args: argparse.Namespace, database_url: str) -> None:
    records = ChatRecords(env=event_store_env(database_url, "bench-secret"))
    service, _ = make_service(records=records, daily_token_limit=10**12)
    service.window.counter = TiktokenCounter()
    numbers = iter(range(args.requests))

    async def client() -> None:
        for i in numbers:
            user = i % args.conversations
            await service.handle(ChatRequest(f"r{i}", f"user{user}@bench.example",
                                             f"question {i}: what is {i} squared?"))

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrent)))
    elapsed = time.perf_counter() - began
    await service.close()
    records.close()
    print(f"{args.requests} requests, {args.concurrent} concurrent, {args.conversations} conversations: "
          f"{args.requests / elapsed:.0f} requests/s; {service.writer.saves} saves in "
          f"{service.writer.transactions} transactions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=None)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    args = parser.parse_args()
    args.conversations = args.conversations or args.requests
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args, args.database_url or f"sqlite:///{tmp}/bench.sqlite"))


if __name__ == "__main__":
    main()
