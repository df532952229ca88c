import pytest

from adapters.event_store import DatabaseUrlError, cipher_key, event_store_env, persistence_env
from entrypoints.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "SECRET_KEY", "SECRET_KEY_PREVIOUS",
                 "MODEL_PROVIDER", "MAX_TOKENS", "TEMPERATURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_platforms(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    settings = load_settings()
    assert (settings.MODEL, settings.VISION_MODEL, settings.MAX_TOKENS) == ("gpt-4o-mini", "gpt-4o", 4000)
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
    assert env["DATA_KEYS_STORE_KEY"] == cipher_key("s3cret") != cipher_key("other")
    assert env["DATA_KEYS_MASTER"] != event_store_env("sqlite:///x", "other")["DATA_KEYS_MASTER"]
    assert not any("s3cret" in value for value in env.values())


def test_a_bad_price_file_stops_the_start_and_names_the_variable(tmp_path):
    from entrypoints.container import build_container

    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o: {prompt: 1}\n")
    settings = load_settings(MODEL_PROVIDER="offline", SECRET_KEY="s3cret", MODEL_PRICES=str(prices))
    with pytest.raises(SettingsError, match="MODEL_PRICES: .*gpt-4o: missing completion"):
        build_container(settings)
    prices.write_text("gpt-4o: {prompt: 1, completion: 2}\n")
    assert build_container(settings).prices().price_of("gpt-4o").prompt == 1


def test_the_api_key_can_come_from_a_file(monkeypatch, tmp_path):
    key_file = tmp_path / "openai-api-key"
    key_file.write_text("sk-from-file-0123\n")  # as a mounted Secret holds it
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    settings = load_settings()
    assert settings.OPENAI_API_KEY is None and settings.OPENAI_API_KEY_FILE == str(key_file)
    assert "sk-from-file-0123" not in repr(settings)


def test_the_api_key_from_the_environment_needs_no_file(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", "")  # a manifest's empty value: not set
    settings = load_settings()
    assert settings.OPENAI_API_KEY_FILE is None
    assert settings.OPENAI_API_KEY.get_secret_value() == "sk-from-env"


async def test_with_both_the_file_wins(monkeypatch, tmp_path, caplog):
    from entrypoints.container import build_container

    key_file = tmp_path / "openai-api-key"
    key_file.write_text("sk-from-file-0123\n")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-4567")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    model = build_container(load_settings()).model_client()
    try:
        assert model.key_source.current() == "sk-from-file-0123"
        assert model.client.api_key == "sk-from-file-0123"
    finally:
        await model.close()
    assert "the file wins" in caplog.text
    assert "sk-from-file-0123" not in caplog.text and "sk-from-env-4567" not in caplog.text


def test_without_either_the_message_names_both(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    with pytest.raises(SettingsError, match="OPENAI_API_KEY is not set: set it \\(or OPENAI_API_KEY_FILE"):
        load_settings()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read {path}: No such file or directory"),
        (b"", "{path} is empty"),
        (b"\n", "{path} is empty"),
        (b"\xff\xfesk-secret-0123", "{path} is not UTF-8 text"),
    ],
)
def test_a_key_file_that_cannot_be_used_is_named_without_its_content(monkeypatch, tmp_path, content, problem):
    key_file = tmp_path / "openai-api-key"
    if content is not None:
        key_file.write_bytes(content)
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-4567")  # the file is asked for: no falling back
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == "invalid configuration:\n  OPENAI_API_KEY_FILE: " + problem.format(path=key_file)
    assert "sk-secret-0123" not in message and "sk-from-env-4567" not in message


def test_an_unreadable_key_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path))  # a directory: mounted at the wrong level
    with pytest.raises(SettingsError, match=f"OPENAI_API_KEY_FILE: cannot read {tmp_path}: Is a directory"):
        load_settings()


def test_the_key_file_is_not_needed_by_the_offline_model(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "missing"))
    assert load_settings().MODEL_PROVIDER == "offline"


def test_the_previous_secret_key_is_optional_and_must_differ(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "new-s3cret")
    assert load_settings().SECRET_KEY_PREVIOUS is None
    monkeypatch.setenv("SECRET_KEY_PREVIOUS", "")
    assert load_settings().SECRET_KEY_PREVIOUS is None
    monkeypatch.setenv("SECRET_KEY_PREVIOUS", "old-s3cret")
    settings = load_settings()
    assert settings.SECRET_KEY_PREVIOUS.get_secret_value() == "old-s3cret"
    assert "old-s3cret" not in repr(settings)
    monkeypatch.setenv("SECRET_KEY_PREVIOUS", "new-s3cret")
    with pytest.raises(SettingsError, match="SECRET_KEY_PREVIOUS is the same as SECRET_KEY") as caught:
        load_settings()
    assert "new-s3cret" not in str(caught.value)


def test_a_validation_error_never_shows_the_inputs(monkeypatch):
    from pydantic import ValidationError

    from entrypoints.settings import Settings

    monkeypatch.setenv("SECRET_KEY", "hunter2")
    monkeypatch.setenv("SECRET_KEY_PREVIOUS", "hunter2")
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    with pytest.raises(ValidationError) as caught:
        Settings()  # not through load_settings: pydantic's own message
    assert "hunter2" not in str(caught.value)


def test_cache_and_batch_settings_are_checked_and_blank_means_unset(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("BATCH_PRIORITY", " ")
    settings = load_settings()
    assert settings.REDIS_URL is None and settings.BATCH_PRIORITY is None
    assert (settings.CACHE_SCOPE, settings.CONTEXT_STRATEGY, settings.CACHE_ANY_TEMPERATURE) == (
        "user", "summarize", False
    )
    monkeypatch.setenv("REDIS_URL", "cache-host:6379")
    monkeypatch.setenv("CACHE_SCOPE", "everyone")
    monkeypatch.setenv("CONTEXT_STRATEGY", "forget")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "REDIS_URL: must be a redis://" in message
    assert "CACHE_SCOPE:" in message and "CONTEXT_STRATEGY:" in message
    assert "cache-host" not in message  # inputs are never echoed


def test_tokens_per_minute_is_off_by_default_and_never_negative(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    assert load_settings().TOKENS_PER_MINUTE == 0
    assert load_settings(TOKENS_PER_MINUTE=90_000).TOKENS_PER_MINUTE == 90_000
    with pytest.raises(SettingsError, match="TOKENS_PER_MINUTE"):
        load_settings(TOKENS_PER_MINUTE=-1)


def test_topics_keep_records_no_longer_than_the_store_keeps_content(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    settings = load_settings(RETENTION_DAYS=30, DLQ_RETENTION_DAYS=" ")
    assert settings.topic_retention_ms == settings.dlq_retention_ms == 30 * 86_400_000
    settings = load_settings(RETENTION_DAYS=30, TOPIC_RETENTION_DAYS=0.5, DLQ_RETENTION_DAYS=14)
    assert (settings.topic_retention_ms, settings.dlq_retention_ms) == (43_200_000, 14 * 86_400_000)
    with pytest.raises(SettingsError) as caught:
        load_settings(RETENTION_DAYS=30, TOPIC_RETENTION_DAYS=31, DLQ_RETENTION_DAYS=90)
    assert "TOPIC_RETENTION_DAYS is 31 days, longer than RETENTION_DAYS (30)" in str(caught.value)
    assert "DLQ_RETENTION_DAYS is 90 days" in str(caught.value)


async def test_with_redis_the_rate_limits_are_shared_by_the_services_replicas_else_per_process():
    from adapters.rate_limiter import SlidingWindowRateLimiter
    from adapters.redis_rate_limiter import RedisRateLimiter
    from entrypoints.container import build_container

    common = dict(MODEL_PROVIDER="offline", SECRET_KEY="s3cret", REQUESTS_PER_MINUTE=30,
                  TOKENS_PER_MINUTE=9000, CONSUMER_GROUP="bots")
    alone = build_container(load_settings(**common)).rate_limiter()
    assert isinstance(alone, SlidingWindowRateLimiter)
    assert (alone.per_minute, alone.tokens_per_minute) == (30, 9000)
    container = build_container(load_settings(REDIS_URL="redis://127.0.0.1:1/0", **common))
    shared = container.rate_limiter()
    try:
        assert isinstance(shared, RedisRateLimiter)
        assert (shared.per_minute, shared.tokens_per_minute) == (30, 9000)
        assert shared._keys[0] == "chater-gpt:{limits:bots}:calls"  # one service: one group
        assert container.chat_service().rate_limiter is shared
        assert container.language_model().pace.args == (shared,)  # retries take admissions too
    finally:
        await shared.close()


def test_a_conversation_keeps_more_turns_than_its_context_and_bounded_bytes(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "offline")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    settings = load_settings()
    assert (settings.turns_kept, settings.CONVERSATION_OUTCOMES_KEPT) == (20, 20)
    assert load_settings(CONTEXT_MAX_TURNS=3).turns_kept == 6
    assert load_settings(CONTEXT_MAX_TURNS=0).turns_kept == 1
    assert load_settings(CONVERSATION_TURNS_KEPT=11).turns_kept == 11
    with pytest.raises(SettingsError, match=r"CONVERSATION_TURNS_KEPT \(10\) must be more than "
                                            r"CONTEXT_MAX_TURNS \(10\)"):
        load_settings(CONVERSATION_TURNS_KEPT=10)
    assert (settings.in_flight_bytes, settings.prefetch_bytes) == (64 * 2**20, 16 * 2**20)
