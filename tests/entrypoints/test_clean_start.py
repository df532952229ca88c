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
