"""`chater-gpt erase`, `retention` and `rotate-keys` against a real SQLite store,
configured as an operator would, by the environment."""

from __future__ import annotations

import pytest

from adapters.event_store import ChatRecords, event_store_env
from application.privacy import KEY_LEDGER_ID
from domain.conversation import ERASED, conversation_id
from entrypoints.cli import main as chater_gpt
from tests.support.conversations import say

SECRET = "commands-secret"


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/events.sqlite"
    records = ChatRecords(env=event_store_env(url, SECRET))
    try:
        say(records, "ada@example.com", "r1", message="my secret", reply="noted")
        say(records, "bob@example.com", "b1", message="bob's own", reply="his")
    finally:
        records.close()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SECRET_KEY", SECRET)
    return url


def stored(url: str, secret: str = SECRET) -> ChatRecords:
    return ChatRecords(env=event_store_env(url, secret))


def test_erase_records_the_erasure_and_destroys_the_users_keys(store, capsys):
    assert chater_gpt(["erase", "Ada@Example.com", "--requested-by", "dpo"]) == 0
    assert capsys.readouterr().out.strip() == (
        "erased Ada@Example.com: 1 conversation(s), 1 data key(s) destroyed"
    )
    records = stored(store)
    try:
        events = list(records.events.get(conversation_id("ada@example.com")))
        assert type(events[-1]).__name__ == "UserErased" and events[-1].requested_by == "dpo"
        assert events[1].message == ERASED
        bobs = list(records.events.get(conversation_id("bob@example.com")))
        assert bobs[1].message == "bob's own"
    finally:
        records.close()


def test_retention_expires_nothing_still_within_the_window(store, capsys):
    assert chater_gpt(["retention"]) == 0
    assert capsys.readouterr().out.strip() == (
        "retention (30 days): content expired in 0 conversation(s)"
    )


def test_rotate_keys_rewraps_every_key_and_records_the_rotation(store, capsys, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-new-secret")
    monkeypatch.setenv("SECRET_KEY_PREVIOUS", SECRET)
    assert chater_gpt(["rotate-keys"]) == 0
    # Two users' keys and the store key; how far it got, on stderr (here: done at once).
    said = capsys.readouterr()
    assert said.out.startswith("rotate-keys: 3 key(s) rewrapped")
    assert said.err.splitlines() == ["rotate-keys: keys rewrapped: 3 of 3 (100 %)"]
    records = ChatRecords(env=event_store_env(store, "the-new-secret"))
    try:
        [rotation] = [e for e in records.events.get(KEY_LEDGER_ID)
                      if type(e).__name__ == "KeysRotated"]
        assert rotation.keys == 3
        assert records.conversation(conversation_id("bob@example.com")).turns[0].reply == "his"
    finally:
        records.close()


def test_retention_says_how_far_it_got_over_the_users_with_expired_content(store, capsys, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from adapters import system_clock

    later = datetime.now(UTC) + timedelta(days=40)  # both users' content is past 30 days
    monkeypatch.setattr(system_clock.SystemClock, "now", lambda self: later)
    assert chater_gpt(["retention"]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == "retention (30 days): content expired in 2 conversation(s)"
    assert said.err.splitlines() == ["retention: users gone through: 2 of 2 (100 %)"]


def test_progress_lines_are_spaced_out_and_never_repeated(capsys, monkeypatch):
    from entrypoints import cli

    now = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: now[0])
    progress = cli.Progress("work", every=2.0)
    for done, at in [(1, 100.5), (2, 101.0), (3, 102.5), (4, 103.0), (10, 103.1), (10, 103.2)]:
        now[0] = at
        progress(done, 10)
    progress(0, 0)  # nothing to do: nothing said
    assert capsys.readouterr().err.splitlines() == [
        "work: 3 of 10 (30 %)", "work: 10 of 10 (100 %)"]
