"""The API key's sources: a variable, or a file re-read when it changes (a mounted Secret)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters import secret_file
from adapters.secret_file import (
    SecretFile,
    SecretFileError,
    StaticSecret,
    api_key_source,
    read_secret_file,
)
from tests.support.mounted_secret import ManualClock, MountedSecret

KEY_A = "sk-rotation-key-aaaa-1111"
KEY_B = "sk-rotation-key-bbbb-2222"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def mounted(tmp_path) -> MountedSecret:
    return MountedSecret(tmp_path / "secret", "openai-api-key", KEY_A)


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often the file is stat'ed and read."""
    counts = {"stat": 0, "read": 0}
    stat, read = secret_file._signature, secret_file.read_secret_file

    def counting_stat(path):
        counts["stat"] += 1
        return stat(path)

    def counting_read(path):
        counts["read"] += 1
        return read(path)

    monkeypatch.setattr(secret_file, "_signature", counting_stat)
    monkeypatch.setattr(secret_file, "read_secret_file", counting_read)
    return counts


def test_the_key_is_read_without_its_trailing_newline(mounted, clock):
    assert Path(mounted.path).read_text() == KEY_A + "\n"
    assert SecretFile(mounted.path, clock=clock).current() == KEY_A


def test_a_rotated_secret_is_used_from_the_next_check_on(mounted, clock):
    key = SecretFile(mounted.path, check_interval=1.0, clock=clock)
    mounted.update(KEY_B)
    clock.advance(0.5)
    assert key.current() == KEY_A  # not looked at yet: at most one check a second
    clock.advance(0.5)
    assert key.current() == KEY_B
    mounted.update(KEY_A)  # and back: every swap is a new inode
    clock.advance(1.0)
    assert key.current() == KEY_A


def test_a_file_rewritten_in_place_is_seen_too(tmp_path, clock):
    path = tmp_path / "key"
    path.write_text(KEY_A)
    key = SecretFile(str(path), clock=clock)
    path.write_text(KEY_B + "-longer\n")
    clock.advance(1.0)
    assert key.current() == KEY_B + "-longer"


def test_an_unchanged_file_is_looked_at_once_a_second_and_never_read_again(mounted, clock, counted):
    key = SecretFile(mounted.path, check_interval=1.0, clock=clock)
    assert counted == {"stat": 1, "read": 1}
    for _ in range(1000):  # a burst of calls within the second: not even a stat
        assert key.current() == KEY_A
        clock.advance(0.0005)
    assert counted == {"stat": 1, "read": 1}
    for _ in range(3):
        clock.advance(1.0)
        assert key.current() == KEY_A
    assert counted == {"stat": 4, "read": 1}  # stat'ed each second, its content never read again


def test_a_changed_file_is_read_once(mounted, clock, counted):
    key = SecretFile(mounted.path, clock=clock)
    mounted.update(KEY_B)
    for _ in range(5):
        clock.advance(1.0)
        assert key.current() == KEY_B
    assert counted["read"] == 2


def test_reread_reads_now_and_says_whether_the_key_changed(mounted, clock, counted):
    key = SecretFile(mounted.path, check_interval=60.0, clock=clock)
    assert key.reread() is False and counted["read"] == 2  # read, whatever the stat says
    mounted.update(KEY_B)
    assert key.reread() is True  # long before the next periodic check
    assert key.current() == KEY_B
    assert key.reread() is False


def test_a_file_that_breaks_keeps_the_last_good_key(tmp_path, clock, caplog):
    path = tmp_path / "key"
    path.write_text(KEY_A + "\n")
    key = SecretFile(str(path), name="OPENAI_API_KEY_FILE", clock=clock)
    path.write_text("\n")
    clock.advance(1.0)
    with caplog.at_level(logging.WARNING, logger="adapters.secret_file"):
        assert key.current() == KEY_A
        assert key.reread() is False
    assert f"OPENAI_API_KEY_FILE: {path} is empty; still using the secret read before" in caplog.text
    assert len(caplog.records) == 1  # said once, not at every look
    path.unlink()
    clock.advance(1.0)
    assert key.current() == KEY_A
    path.write_text(KEY_B + "\n")
    clock.advance(1.0)
    assert key.current() == KEY_B
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def test_the_key_never_shows_in_a_repr_or_a_log(mounted, clock, caplog):
    with caplog.at_level(logging.DEBUG, logger="adapters.secret_file"):
        key = SecretFile(mounted.path, name="OPENAI_API_KEY_FILE", clock=clock)
        mounted.update(KEY_B)
        assert key.reread() is True
    assert "has a new secret" in caplog.text
    for shown in (repr(key), str(key), repr(StaticSecret(KEY_A)), str(StaticSecret(KEY_A)), caplog.text):
        assert KEY_A not in shown and KEY_B not in shown


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read {path}: No such file or directory"), (b"", "{path} is empty"),
     (b" \n\n", "{path} is empty"), (b"\xff\xfe" + KEY_A.encode(), "{path} is not UTF-8 text")],
)
def test_an_unusable_file_is_named_and_its_content_never_shown(tmp_path, content, problem):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretFileError) as caught:
        read_secret_file(str(path))
    assert str(caught.value) == problem.format(path=path)
    with pytest.raises(SecretFileError):
        SecretFile(str(path))


def test_a_directory_is_no_key_file(tmp_path):
    with pytest.raises(SecretFileError, match=f"cannot read {tmp_path}: Is a directory"):
        read_secret_file(str(tmp_path))


def test_the_file_wins_over_the_variable_and_says_so_without_the_key(mounted, caplog):
    with caplog.at_level(logging.WARNING, logger="adapters.secret_file"):
        source = api_key_source(KEY_B, mounted.path)
    assert isinstance(source, SecretFile) and source.current() == KEY_A
    assert "OPENAI_API_KEY_FILE and OPENAI_API_KEY are both set: the file wins" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def test_a_key_from_the_variable_never_changes():
    source = api_key_source(KEY_A, None)
    assert isinstance(source, StaticSecret)
    assert source.current() == KEY_A and source.reread() is False
    assert api_key_source(KEY_A, "").current() == KEY_A
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        api_key_source(None, None)
