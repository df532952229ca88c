"""`/metrics` after real traffic: the numbers match what was sent and what the model used."""

from __future__ import annotations

import json
import time
from importlib.metadata import version

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.records import produce, read

pytestmark = pytest.mark.integration

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def scrape(worker) -> dict[str, list]:
    status, content_type, body = worker.fetch("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())


def test_metrics_count_what_was_sent_and_what_the_model_used(broker, topics, fake_openai, worker):
    records = [
        # 8 turns per user: within CONTEXT_MAX_TURNS, so no summary calls add tokens.
        (f"m-{n}", json.dumps({"user_email": f"m{n % 6}@example.com", "message": f"m-{n}: hello there"}).encode())
        for n in range(48)
    ]
    records.append(("m-vision", json.dumps({
        "user_email": "eye@example.com", "message": "what is this?", "images": [PNG],
    }).encode()))
    records.append(("m-bad", b"{not json"))
    produce(broker, topics["REQUEST_TOPIC"], records)
    answers = dict(read(broker, topics["RESPONSE_TOPIC"], len(records)))
    # A response can be read a moment before the worker hears it was delivered.
    deadline = time.monotonic() + 5
    while total(samples := scrape(worker), "chater_gpt_in_flight") and time.monotonic() < deadline:
        time.sleep(0.05)

    assert total(samples, "chater_gpt_requests_total") == 50
    assert total(samples, "chater_gpt_requests_total", outcome="answered") == 49
    assert total(samples, "chater_gpt_requests_total", kind="vision", model="gpt-4o") == 1
    assert total(samples, "chater_gpt_errors_total", type="invalid_request") == 1
    assert total(samples, "chater_gpt_replies_total", source="model") == 49
    assert total(samples, "chater_gpt_replies_total", source="cached") == 0
    used = [a["usage"] for a in answers.values() if "usage" in a]
    assert total(samples, "chater_gpt_tokens_total", type="prompt") == sum(u["prompt_tokens"] for u in used)
    assert total(samples, "chater_gpt_tokens_total", type="completion") == sum(
        u["completion_tokens"] for u in used
    )
    # Cost is tokens times the shipped price of gpt-4o-mini ($0.15 / $0.60 per
    # million), and of gpt-4o ($2.50 / $10.00) for the vision request (VISION_MODEL's
    # default); a model without a price is marked (test_usage_report_end_to_end).
    text = [a for a in answers.values() if a.get("model") == "gpt-4o-mini"]
    assert len(text) == 48
    expected = sum(
        a["usage"]["prompt_tokens"] * 0.15 + a["usage"]["completion_tokens"] * 0.60 for a in text
    ) / 1e6
    assert total(samples, "chater_gpt_cost_usd_total", model="gpt-4o-mini") == pytest.approx(expected)
    assert sum(a["cost_usd"] for a in text) == pytest.approx(expected)
    vision = answers["m-vision"]
    assert vision["model"] == "gpt-4o"
    vision_cost = (vision["usage"]["prompt_tokens"] * 2.50 + vision["usage"]["completion_tokens"] * 10.00) / 1e6
    assert vision["cost_usd"] == pytest.approx(vision_cost)
    assert total(samples, "chater_gpt_cost_usd_total", model="gpt-4o") == pytest.approx(vision_cost)
    assert total(samples, "chater_gpt_unpriced_calls_total") == 0
    assert total(samples, "chater_gpt_model_call_duration_seconds_count", outcome="ok") == 49
    assert total(samples, "chater_gpt_request_duration_seconds_count") == 50
    assert total(samples, "chater_gpt_in_flight") == 0
    assert total(samples, "chater_gpt_circuit_state", model="gpt-4o-mini") == 0
    assert 0 < total(samples, "chater_gpt_budget_remaining_tokens") < 100_000_000  # a lease is held
    # OpenTelemetry's GenAI conventions beside ours: the same tokens per call, by
    # input and output, and each call's duration.
    assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        u["prompt_tokens"] for u in used)
    assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == sum(
        u["completion_tokens"] for u in used)
    assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input",
                 gen_ai_request_model="gpt-4o-mini", gen_ai_operation_name="chat",
                 gen_ai_provider_name="openai") == 48
    assert total(samples, "gen_ai_client_operation_duration_seconds_count",
                 gen_ai_operation_name="chat") == 49
    # What runs, and the process itself.
    [build] = samples["chater_gpt_build_info"]
    assert build.value == 1 and build.labels["version"] == version("chater-gpt")
    assert build.labels["openai"] == version("openai") and build.labels["librdkafka"].startswith("2.")
    assert total(samples, "process_cpu_seconds_total") > 0
    assert total(samples, "process_resident_memory_bytes") > 50 * 2**20
    assert total(samples, "python_gc_collections_total") > 0
    assert samples["python_info"][0].labels["major"] == "3"
    # Retries, fallbacks and dead letters are counters; the provider's headroom is
    # what its last answer said (the local model server sends 9999 and 999999).
    assert total(samples, "chater_gpt_dead_letters_total") == 1  # m-bad
    assert total(samples, "chater_gpt_model_retries_total") == 0
    assert total(samples, "chater_gpt_provider_remaining_requests", model="gpt-4o-mini") == 9999
    assert total(samples, "chater_gpt_provider_remaining_tokens", model="gpt-4o-mini") == 999999
