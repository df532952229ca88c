"""A clean start: every settings problem at once, DATABASE_URL's options, no secret in lines."""

import pytest

from adapters.event_store import persistence_env
from adapters.postgres_setup import mask_password
from entrypoints.cli import main
from entrypoints.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "SECRET_KEY", "SECRET_KEY_PREVIOUS",
                 "MODEL_PROVIDER", "MAX_TOKENS", "TEMPERATURE", "DATABASE_URL", "HEALTH_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_every_problem_is_reported_in_one_run(monkeypatch):
    monkeypatch.setenv("MAX_TOKENS", "lots")
    monkeypatch.setenv("TEMPERATURE", "3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://chater:hunter2@db/chat?sslmod=require")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    for named in ("MAX_TOKENS:", "TEMPERATURE:", "DATABASE_URL: the query option 'sslmod'",
                  "OPENAI_API_KEY is not set", "SECRET_KEY is not set"):
        assert named in message, named
    assert "hunter2" not in message
    assert len(message.splitlines()) == 6  # the heading and one line per problem


def test_the_checks_across_settings_report_together(monkeypatch):
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "OPENAI_API_KEY is not set" in str(caught.value)
    assert "SECRET_KEY is not set" in str(caught.value)


def test_database_url_options_become_libpq_settings():
    env = persistence_env(
        "postgresql://chater:p%40ss@db:6543/chat?sslmode=verify-full&sslrootcert=/ca.pem"
        "&application_name=chater-gpt"
    )
    assert env["PGSSLMODE"] == "verify-full"
    assert env["PGSSLROOTCERT"] == "/ca.pem"
    assert env["PGAPPNAME"] == "chater-gpt"
    assert (env["POSTGRES_DBNAME"], env["POSTGRES_PASSWORD"]) == ("chat", "p@ss")


def test_passwords_are_masked_in_lines():
    assert mask_password("postgresql://chater:hunter2@db:5432/chat?sslmode=require") == (
        "postgresql://chater:***@db:5432/chat?sslmode=require"
    )
    assert mask_password("postgresql://chater@db/chat") == "postgresql://chater@db/chat"
    assert mask_password("sqlite:///x.db") == "sqlite:///x.db"


def test_the_health_address_is_a_setting(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    assert load_settings().HEALTH_HOST is None  # every interface
    monkeypatch.setenv("HEALTH_HOST", " ")
    assert load_settings().HEALTH_HOST is None
    monkeypatch.setenv("HEALTH_HOST", "127.0.0.1")
    assert load_settings().HEALTH_HOST == "127.0.0.1"


def test_worker_help_says_where_settings_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "environment variable" in text
    assert "Configuration table of the README" in text


# Passwords with an unencoded `/`, `?` or `#`: a URL parser reads part of them as
# the host, the port or the path (`chater:12/34x@db` is host `chater`, port 12).
BROKEN_URLS = (
    "postgresql://chater:12/34x@db/chat",
    "postgresql://chater:ab/cd@db/chat",
    "postgresql://chater:hun?ter2@db:5432/chat?sslmode=require",
    "postgresql://chater:hun#ter2@db/chat",
    "postgresql://chater:a@b/c@db/chat",
)


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_a_password_that_breaks_url_parsing_is_still_masked(url):
    masked = mask_password(url)
    assert masked.startswith("postgresql://chater:***@")
    password = url.removeprefix("postgresql://chater:").rpartition("@")[0]
    assert password not in masked
    assert masked.endswith(url.rpartition("@")[2])


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_a_database_url_that_cannot_be_read_is_refused_without_quoting_it(monkeypatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    # The whole line: it says what is wrong and quotes no part of the URL.
    assert message.splitlines()[1:] == [
        "  DATABASE_URL: could not be read as a URL; percent-encode special characters in "
        "the password (/ ? # @ : as %2F %3F %23 %40 %3A)"
    ]


def test_an_encoded_password_is_read():
    env = persistence_env("postgresql://chater:12%2F34x%3F%23@db/chat")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PASSWORD"]) == ("db", "12/34x?#")


def test_libpq_options_do_not_carry_over_from_one_url_to_the_next(monkeypatch):
    import os

    from adapters.postgres_setup import export_libpq_options

    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")  # the operator's own, not the URL's
    for name in ("PGSSLMODE", "PGAPPNAME", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)
    try:
        export_libpq_options(persistence_env(
            "postgresql://db/chat?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=2"
        ))
        assert (os.environ["PGSSLMODE"], os.environ["PGCONNECT_TIMEOUT"]) == ("verify-full", "2")
        export_libpq_options(persistence_env("postgresql://db/chat?application_name=next"))
        assert os.environ["PGAPPNAME"] == "next"
        assert "PGSSLMODE" not in os.environ and "PGSSLROOTCERT" not in os.environ
        assert os.environ["PGCONNECT_TIMEOUT"] == "7"  # given back
    finally:
        export_libpq_options({})
    assert "PGAPPNAME" not in os.environ


def test_sigterm_while_the_settings_load_ends_the_worker_with_status_0(tmp_path):
    """A stop request before the worker's loop handles signals (here while the
    settings load) ends the process at once with 0, not by the default action."""
    import subprocess
    import sys
    import time

    script = (
        "import os, signal, sys, time\n"
        "import entrypoints.cli as cli\n"
        "def loading(**overrides):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    raise SystemExit(3)\n"
        "cli.load_settings = loading\n"
        "sys.exit(cli.main(['worker']))\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          cwd=tmp_path, env={**__import__("os").environ,
                                             "PYTHONPATH": str(__import__("pathlib").Path(
                                                 __file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - started < 20
    assert b"stopped during start-up (SIGTERM)" in done.stderr
