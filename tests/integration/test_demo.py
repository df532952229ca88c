"""`chater-gpt demo`, the README's first command, runs end to end on this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_answers_audits_and_shows_what_operators_see(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "DATABASE_URL"}}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "demo"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ("demo-1", "demo-2", "demo-3"):
        assert f"<<< gpt-response key={key}" in out
    assert "ReplyRecorded" in out and "offline:gpt-4o-mini" in out
    assert "GET /readyz -> 200" in out and '"status": "ready"' in out
    assert 'chater_gpt_requests_total{kind="text",model="offline:gpt-4o-mini",outcome="answered"} 2.0' in out
    assert 'chater_gpt_requests_total{kind="vision",model="offline:gpt-4o",outcome="answered"} 1.0' in out
    report = out.split("Usage report (chater-gpt usage --by model):", 1)[1].splitlines()
    # model, requests, answered, failed, tokens..., cost: the offline model is free.
    assert report[3].split()[:4] == ["offline:gpt-4o", "1", "1", "0"]
    assert report[4].split()[:4] == ["offline:gpt-4o-mini", "2", "2", "0"]
    total = report[6].split()
    assert total[:4] == ["total", "3", "3", "0"] and total[7] == "0.00000000"
    after = out.split("Audit replay after the erasure", 1)[1]
    assert "erased ada@example.com: 1 conversation(s), 1 data key(s) destroyed" in out
    assert "UserErased" in after and '"[erased]"' in after and "Jupiter" not in after
    assert "Which planet" not in after and "17+" in after  # the accounting stays
    assert "Demo finished; broker, worker and store stopped." in out
