"""Large records: a worker holds no more bytes than MAX_IN_FLIGHT_MB (and what its
consumer fetched ahead), pausing its fetches meanwhile, and answers them all."""

from __future__ import annotations

import pytest

from tests.support.worker import RunningWorker

pytestmark = pytest.mark.integration

RECORDS = 100
WORDS = 6_000  # about 36 KB a record


def test_large_records_are_held_a_few_at_a_time_and_all_answered(
    broker, fake_openai, in_process_settings
):
    fake_openai.set_latency(0.5)
    limit_mib = 0.5
    try:
        with RunningWorker(
            broker.bootstrap_server, **in_process_settings,
            MAX_IN_FLIGHT_MB=limit_mib, MAX_IN_FLIGHT=1000, CONTEXT_MAX_TOKENS=100_000,
            MAX_TOKENS=20,
        ) as worker:
            sizes = []
            for n in range(RECORDS):
                body = {"user_email": f"big{n}@example.com", "message": f"{n} " + "word " * WORDS}
                worker.send(f"big-{n}", body)
                sizes.append(len(str(body)))
            responses = dict(worker.responses(RECORDS, timeout=120))
            stats = worker.worker.stats
    finally:
        fake_openai.set_latency(0.0)

    assert all("response" in body for body in responses.values()), responses
    total = sum(sizes)
    limit = limit_mib * 1024 * 1024
    # What one fetch from the consumer's queue can add beyond the limit: the queue
    # holds a quarter of it, and one fetch librdkafka's smallest allowed (1 MB).
    assert stats.pauses >= 1
    assert stats.peak_in_flight_bytes <= limit + 1_000_000 + limit / 4, stats
    assert stats.peak_in_flight_bytes < total / 2, (stats.peak_in_flight_bytes, total)
    assert stats.in_flight_bytes == 0
