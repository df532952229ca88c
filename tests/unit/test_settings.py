import pytest

from adapters.event_store import DatabaseUrlError, cipher_key, event_store_env, persistence_env
from entrypoints.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "SECRET_KEY", "MODEL_PROVIDER", "MAX_TOKENS", "TEMPERATURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_platforms(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    settings = load_settings()
    assert (settings.MODEL, settings.VISION_MODEL, settings.MAX_TOKENS) == ("gpt-4o-mini", "gpt-4o-latest", 4000)
    assert (settings.CONSUMER_GROUP, settings.REQUESTS_PER_MINUTE, settings.DAILY_TOKEN_LIMIT) == (
        "chater-gpt-group", 60, 1_000_000
    )
    assert (settings.MAX_RETRIES, settings.TIMEOUT, settings.TEMPERATURE) == (3, 30, 0.7)


def test_a_missing_api_key_is_an_error_unless_offline_is_chosen(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    with pytest.raises(SettingsError, match="OPENAI_API_KEY is not set"):
        load_settings()
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    assert load_settings().MODEL_PROVIDER == "offline"


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("MAX_TOKENS", "lots")
    monkeypatch.setenv("TEMPERATURE", "3")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "MAX_TOKENS:" in str(caught.value) and "TEMPERATURE:" in str(caught.value)


def test_secret_key_is_required_and_never_printed(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    with pytest.raises(SettingsError, match="SECRET_KEY is not set"):
        load_settings()
    monkeypatch.setenv("SECRET_KEY", "hunter2")
    assert "hunter2" not in repr(load_settings())


def test_database_urls_choose_the_event_store():
    assert persistence_env("sqlite:///events.db")["SQLITE_DBNAME"] == "events.db"
    assert persistence_env("sqlite:////var/lib/x.db")["SQLITE_DBNAME"] == "/var/lib/x.db"
    pg = persistence_env("postgresql://chater:p%40ss@db.internal:6543/chat")
    assert pg["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert (pg["POSTGRES_HOST"], pg["POSTGRES_PORT"], pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DBNAME"]) == (
        "db.internal", "6543", "chater", "p@ss", "chat"
    )
    with pytest.raises(DatabaseUrlError, match="unsupported scheme 'mysql'"):
        persistence_env("mysql://x/y")


def test_events_are_encrypted_with_a_key_derived_from_the_secret():
    env = event_store_env("memory://", "s3cret")
    assert env["CIPHER_TOPIC"] == "eventsourcing.cryptography:AESCipher"
    assert env["CIPHER_KEY"] == cipher_key("s3cret") != cipher_key("other")
    assert "s3cret" not in env["CIPHER_KEY"]


def test_a_bad_price_file_stops_the_start_and_names_the_variable(tmp_path):
    from entrypoints.container import build_container

    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o: {prompt: 1}\n")
    settings = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="s3cret", MODEL_PRICES=str(prices))
    with pytest.raises(SettingsError, match="MODEL_PRICES: .*gpt-4o: missing completion"):
        build_container(settings)
    prices.write_text("gpt-4o: {prompt: 1, completion: 2}\n")
    assert build_container(settings).prices().price_of("gpt-4o").prompt == 1
