"""`chater-gpt check` against the real broker, PostgreSQL, Redis and the local model
server, configured as an operator would, by the environment: a line per finding,
and an exit code that says whether the worker can run."""

from __future__ import annotations

import json
import re
import socket

import pytest

from entrypoints.cli import main as chater_gpt

pytestmark = pytest.mark.integration


@pytest.fixture
def configured(worker_env, monkeypatch):
    """The worker's environment, as the process environment of the command."""
    def configure(**changes: str) -> None:
        for name, value in {**worker_env, **changes}.items():
            monkeypatch.setenv(name, value)
    return configure


def lines(text: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail) of a text report."""
    found = {}
    for line in text.splitlines()[:-1]:
        status, check, detail = re.match(r"(\w+)\s+(\S+(?: \S+)?)\s{2,}(.*)", line).groups()
        found[check] = (status, detail)
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_everything_reachable_is_ready_with_a_line_for_each_part(
        configured, redis_url, topics, capsys):
    configured(REDIS_URL=redis_url)
    assert chater_gpt(["check", "--replicas", "3"]) == 0
    out = capsys.readouterr().out
    found = lines(out)
    assert found["settings"][0] == "ok"
    assert found["broker"][0] == "ok" and "1 broker(s)" in found["broker"][1]
    assert found[f"topic {topics['REQUEST_TOPIC']}"] == ("ok", "1 partition(s)")
    repartition = f"topic {topics['CONSUMER_GROUP']}-{topics['REQUEST_TOPIC']}-repartition"
    assert found[repartition] == ("ok", "missing: the worker creates it, 12 partition(s)")
    # Three replicas and a request topic of one partition: two hand nothing over.
    assert found["partitions"] == ("warn", f"3 replicas (--replicas), but {topics['REQUEST_TOPIC']} "
                                   "has 1 partition(s): 2 replica(s) would idle")
    assert found["store"][0] == "ok" and found["store"][1].startswith("PostgreSQL at 127.0.0.1:")
    assert "@" not in found["store"][1]  # never the credentials
    assert found["redis"][0] == "ok" and found["redis"][1].startswith("Redis ")
    assert found["provider MODEL"][0] == "ok" and found["provider MODEL"][1].startswith("gpt-4o-mini at http")
    assert found["provider VISION_MODEL"][0] == "ok"
    assert found["price MODEL"] == ("ok", "gpt-4o-mini: $0.15 prompt, $0.6 completion, cached prompt "
                                    "$0.075 per million tokens (the shipped table)")
    assert out.splitlines()[-1].endswith(": ready") and "1 warn" in out.splitlines()[-1]


def test_without_replicas_and_without_members_nothing_is_compared(configured, capsys):
    configured()
    assert chater_gpt(["check"]) == 0
    assert lines(capsys.readouterr().out)["partitions"] == (
        "skip", "no replica is running: --replicas N compares")


def test_what_cannot_work_fails_with_its_reason_and_exit_1(configured, fake_openai, capsys):
    configured(BOOTSTRAP_SERVER=f"127.0.0.1:{closed_port()}", MODEL="gpt-4o-latest")
    assert chater_gpt(["check", "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    found = lines(out)
    assert found["broker"][0] == "fail" and "no answer within 2 s" in found["broker"][1]
    assert "partitions" not in found  # nothing to compare without the broker
    assert found["provider MODEL"] == ("fail", "gpt-4o-latest at " + fake_openai.base_url
                                       + ": not served (model_not_found): every call would fail")
    assert found["provider VISION_MODEL"][0] == "ok"
    assert found["price MODEL"][0] == "warn" and "gpt-4o-latest is unpriced" in found["price MODEL"][1]
    assert out.splitlines()[-1].endswith(": cannot run as configured")


def test_a_refused_key_and_a_missing_topic_fail(configured, fake_openai, topics, capsys):
    fake_openai.accept_api_keys(["the-right-key"])
    configured(CREATE_TOPICS="false", REQUEST_TOPIC="nobody-made-this-topic")
    assert chater_gpt(["check", "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is False
    found = {f["check"]: (f["status"], f["detail"]) for f in report["findings"]}
    assert found["topic nobody-made-this-topic"] == ("fail", "missing, and CREATE_TOPICS is false: create it")
    assert found[f"topic {topics['RESPONSE_TOPIC']}"][0] == "ok"
    assert found["provider MODEL"][0] == "fail" and found["provider MODEL"][1].endswith(
        "refused the API key (401)")
    assert "provider VISION_MODEL" not in found  # the same answer for every model: asked once


def test_an_unpriced_model_the_provider_serves_is_a_warning(configured, fake_openai, capsys):
    fake_openai.serve_models(["acme-llm"])
    configured(MODEL="acme-llm")
    assert chater_gpt(["check"]) == 0
    found = lines(capsys.readouterr().out)
    assert found["provider MODEL"][0] == "ok"
    assert found["price MODEL"] == ("warn", "acme-llm is unpriced in the shipped table: its calls "
                                    "cost null, and no dollar figure counts them")


def test_invalid_settings_are_all_named_with_exit_2(configured, capsys):
    configured(TEMPERATURE="9", MAX_TOKENS="-1")
    assert chater_gpt(["check"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "TEMPERATURE" in err and "MAX_TOKENS" in err


def test_version_names_the_package_and_its_clients(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        chater_gpt(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"chater-gpt {version('chater-gpt')} (Python 3.")
    assert f"openai {version('openai')}" in out and "librdkafka 2." in out


def test_budgets_are_reported_and_an_unpriced_model_fails_under_a_dollar_limit(
        configured, fake_openai, tmp_path, capsys):
    limits = tmp_path / "limits.yaml"
    limits.write_text("Ada@Example.com: 500000\nbob@example.com: 20000\n")
    fake_openai.serve_models(["acme-llm"])
    configured(MODEL="acme-llm", DAILY_COST_LIMIT="25", USER_DAILY_TOKEN_LIMIT="100000",
               USER_TOKEN_LIMITS=str(limits))
    assert chater_gpt(["check"]) == 1
    found = lines(capsys.readouterr().out)
    assert found["budgets"] == ("ok", "100,000,000 tokens a day for the service; $25.00 a day; "
                                "100,000 tokens a day for each user; 2 user(s) with limits of their own")
    assert found["price MODEL"] == ("fail", "acme-llm is unpriced in the shipped table: no request "
                                    "can use it while DAILY_COST_LIMIT is set")
    limits.write_text("not-an-address: 5\n")
    assert chater_gpt(["check"]) == 1
    assert lines(capsys.readouterr().out)["budgets"] == (
        "fail", f"USER_TOKEN_LIMITS: {limits}: entry 1 is not an e-mail address")
