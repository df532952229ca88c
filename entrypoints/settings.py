"""Settings from the environment (and .env), with the names the Chater platform uses."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field, InstanceOf, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.kafka import KafkaSettings, kafka_settings, with_kafka_variables
from adapters.secret_file import SecretFileError, read_secret_file


# Seconds a stopping worker needs after SHUTDOWN_TIMEOUT (the last deliveries, the
# final commit, recording calls it cut short, leaving the groups): a pod's termination
# grace is at least SHUTDOWN_TIMEOUT plus this.
SHUTDOWN_MARGIN = 30


class Settings(BaseSettings):
    """Every field is read from the environment variable of the same name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=True,
        extra="ignore",
        # A failed model check would otherwise print every input, secrets included.
        hide_input_in_errors=True,
    )

    # The platform's existing names.
    OPENAI_API_KEY: SecretStr | None = None
    MODEL: str = "gpt-4o-mini"
    VISION_MODEL: str = "gpt-4o"  # "gpt-4o-latest", the platform's name, is answered by gpt-4o
    MAX_TOKENS: int = Field(4000, gt=0)
    TEMPERATURE: float = Field(0.7, ge=0, le=2)
    BOOTSTRAP_SERVER: str = "localhost:9092"
    # Every other KAFKA_* variable is a librdkafka property (adapters.kafka), gathered here;
    # KAFKA_BOOTSTRAP_SERVERS is BOOTSTRAP_SERVER's other name.
    KAFKA: InstanceOf[KafkaSettings] = Field(None, exclude=True)  # type: ignore[assignment]
    CONSUMER_GROUP: str = "chater-gpt-group"
    SECRET_KEY: SecretStr | None = None
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    MAX_RETRIES: int = Field(3, ge=0)
    TIMEOUT: float = Field(30, gt=0)
    REQUESTS_PER_MINUTE: int = Field(
        60, ge=0, description="model calls in any sliding minute, for all replicas together "
        "when REDIS_URL is set (else per process); 0 turns the limit off"
    )
    DAILY_TOKEN_LIMIT: int = Field(1_000_000, gt=0)
    USER_DAILY_TOKEN_LIMIT: int | None = Field(
        None, gt=0, description="tokens a user may use a day (UTC), for all replicas together; "
        "unset: users are not limited apart"
    )
    USER_TOKEN_LIMITS: str | None = Field(
        None, description="a JSON or YAML file of users' own daily token limits, by e-mail "
        "address: ada@example.com: 500000 (beside or instead of USER_DAILY_TOKEN_LIMIT)"
    )
    DAILY_COST_LIMIT: float | None = Field(
        None, gt=0, description="US dollars the service may spend a day (UTC) at the price "
        "table, for all replicas together: held at the worst price, settled at the real one"
    )

    # Settings this service adds, named in the same style.
    OPENAI_API_KEY_FILE: str | None = Field(
        None,
        description="a file holding the key (a mounted Secret); wins over OPENAI_API_KEY, "
        "and is read again when it changes",
    )
    SECRET_KEY_PREVIOUS: SecretStr | None = Field(
        None,
        description="the previous SECRET_KEY during a rotation: data keys wrapped with it are "
        "still unwrapped, and `chater-gpt rotate-keys` rewraps them with SECRET_KEY",
    )
    OPENAI_BASE_URL: str | None = None
    MODEL_PROVIDER: Literal["openai", "offline"] = "openai"
    FALLBACK_MODEL: str | None = None
    REQUEST_DEADLINE: float = Field(600, gt=0, description="seconds from a record's timestamp")
    STALL_GRACE: float | None = Field(
        None, gt=0,
        description="seconds past a record's deadline after which its lane counts as stalled "
        "(not ready; not alive while every dependency answers); default: every attempt of a "
        "model call and of its fallback at TIMEOUT, plus a minute",
    )
    CIRCUIT_FAILURE_THRESHOLD: int = Field(5, gt=0)
    CIRCUIT_PROBE_INTERVAL: float = Field(5, gt=0)
    DATABASE_URL: str = "sqlite:///eventsourcing.sqlite"
    REQUEST_TOPIC: str = "gpt-send"
    RESPONSE_TOPIC: str = "gpt-response"
    DLQ_TOPIC: str = "gpt-send.dlq"
    CREATE_TOPICS: bool = True
    TOPIC_PARTITIONS: int = Field(
        12, gt=0,
        description="partitions of the topics the service creates (the request topic's "
        "and its repartition topic's): at least the number of worker replicas",
    )
    REPARTITION_TOPIC: str | None = Field(
        None,
        description="the internal topic the requests are handed over to, keyed by "
        "conversation; default: <CONSUMER_GROUP>-<REQUEST_TOPIC>-repartition",
    )
    ORDER_WINDOW: float = Field(
        0.5, ge=0, le=60,
        description="seconds a turn waits after it was produced, so that an earlier turn "
        "of its conversation, produced to another partition, is answered first",
    )
    CONTEXT_MAX_TOKENS: int = Field(8000, gt=0)
    CONTEXT_MAX_TURNS: int = Field(10, ge=0)
    CONVERSATION_TURNS_KEPT: int | None = Field(
        None, ge=0,
        description="turns a conversation holds besides its summary (older ones stay in "
        "its events, for the audit); more than CONTEXT_MAX_TURNS, so that a summary can "
        "take in the older ones; default: twice CONTEXT_MAX_TURNS, at least 1",
    )
    CONVERSATION_OUTCOMES_KEPT: int = Field(
        20, ge=1,
        description="answered and failed requests a conversation remembers, newest first, "
        "so that a redelivered record is answered from the store and not the model; a "
        "record delivered again after more requests than that is answered anew",
    )
    CONVERSATION_CACHE_MB: float = Field(
        64, ge=0,
        description="MiB of conversations a worker process keeps in memory between turns "
        "(0: none; each is read from the store)",
    )
    MAX_BATCH: int = Field(500, gt=0)
    MAX_REQUEST_BYTES: int = Field(
        10 * 1024 * 1024, gt=0, le=512 * 1024 * 1024,
        description="a record value above it is refused (and dead-lettered whole)",
    )
    MAX_KEY_BYTES: int = Field(
        4096, gt=0, le=1024 * 1024,
        description="a record key (the request id) above it is refused: no response can "
        "carry it, the dead letter keeps it",
    )
    MAX_IN_FLIGHT: int = Field(1000, gt=0)
    MAX_IN_FLIGHT_MB: float = Field(
        64, gt=0,
        description="MiB of records (values and keys) a worker process holds at once; "
        "beyond it, as beyond MAX_IN_FLIGHT, it pauses fetching. Each of its two consumers "
        "fetches ahead at most a quarter of it (queued.max.messages.kbytes and "
        "fetch.max.bytes, unless set by KAFKA_*)",
    )
    SHUTDOWN_TIMEOUT: float = Field(
        60, ge=0,
        description="seconds the requests in flight get to finish when the worker stops, and "
        "when their partition moves to another worker (then at most half of "
        "max.poll.interval.ms); the pod's termination grace must exceed it by "
        "SHUTDOWN_MARGIN",
    )
    BUDGET_CHUNK_TOKENS: int = Field(100_000, gt=0)
    BUDGET_LEASE_EXPIRY: float = Field(60, gt=0, description="seconds an unsettled lease holds")
    LOG_FORMAT: Literal["json", "text"] = "json"
    LOG_CONTENT: bool = Field(False, description="message text and e-mail addresses in logs")
    MODEL_PRICES: str | None = Field(
        None, description="a JSON or YAML file of prices per million tokens, by model, "
        "or LiteLLM's model_prices_and_context_window.json"
    )
    HEALTH_PORT: int = Field(8080, ge=0, le=65535, description="0 turns the health server off")
    HEALTH_HOST: str | None = Field(
        None, description="the health server's address (0.0.0.0, ::, 127.0.0.1…); "
        "unset: every interface"
    )
    PII_MODE: Literal["off", "mask", "block"] = Field(
        "mask", description="personal data before the model: masked, refused, or sent as is"
    )
    ERASE_TOPIC: str = Field("gpt-erase", description="erasure requests: {\"user_email\": ...}")
    RETENTION_DAYS: int = Field(30, gt=0, description="days conversation content is kept")
    TOPIC_RETENTION_DAYS: float | None = Field(
        None, gt=0,
        description="days the request, response, repartition and erasure topics the service "
        "creates keep records (retention.ms); default and at most RETENTION_DAYS",
    )
    DLQ_RETENTION_DAYS: float | None = Field(
        None, gt=0,
        description="days the dead-letter topic the service creates keeps records; default "
        "and at most RETENTION_DAYS",
    )
    RETENTION_INTERVAL: float = Field(
        3600, gt=0, description="seconds between the worker's retention runs"
    )
    REDIS_URL: str | None = Field(
        None, description="the response cache, and REQUESTS_PER_MINUTE and TOKENS_PER_MINUTE "
        "shared by all replicas; unset: no cache, and those limits hold per process"
    )
    TOKENS_PER_MINUTE: int = Field(
        0, ge=0, description="tokens of prompt + completion in any sliding minute, for all "
        "replicas together when REDIS_URL is set (else per process); 0 turns the limit off"
    )
    CACHE_TTL: float = Field(3600, gt=0, description="seconds a cached reply is reused")
    CACHE_ANY_TEMPERATURE: bool = Field(
        False, description="cache (and share) replies of any temperature, not only of 0"
    )
    CACHE_SCOPE: Literal["user", "global"] = Field(
        "user", description="whose identical requests share a cached reply"
    )
    CONTEXT_STRATEGY: Literal["truncate", "summarize"] = Field(
        "summarize", description="history that no longer fits: dropped, or summarised"
    )
    MODEL_CONCURRENCY: int = Field(
        0, ge=0, description="model calls at once per worker; 0: no limit but the rate"
    )
    PRIORITY_AGING: float = Field(
        30, gt=0, description="seconds of waiting that count as one step of priority"
    )
    BATCH_PRIORITY: int | None = Field(
        None, description="requests with a priority below it go through the Batch API"
    )
    BATCH_WINDOW: float = Field(
        10, gt=0, description="seconds batch requests are collected before one batch is sent"
    )
    BATCH_MAX_REQUESTS: int = Field(1000, gt=0, le=50_000, description="requests per batch")
    BATCH_POLL_INTERVAL: float = Field(30, gt=0, description="seconds between batch polls")
    BATCH_MAX_WAITING: int = Field(
        10_000, gt=0,
        description="requests parked in open batches (all replicas); beyond it batch requests go live",
    )
    BATCH_DEADLINE: float = Field(
        26 * 3600, gt=0, description="seconds from a batch request's timestamp to give up"
    )

    @field_validator(
        "OPENAI_API_KEY_FILE", "SECRET_KEY_PREVIOUS", "REDIS_URL", "BATCH_PRIORITY", "STALL_GRACE",
        "HEALTH_HOST", "REPARTITION_TOPIC", "TOPIC_RETENTION_DAYS", "DLQ_RETENTION_DAYS",
        mode="before",
    )
    @classmethod
    def blank_is_unset(cls, value: object) -> object:
        # A manifest that sets the variable to "" means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def repartition_topic(self) -> str:
        """The topic the requests are handed over to, keyed by conversation."""
        return self.REPARTITION_TOPIC or f"{self.CONSUMER_GROUP}-{self.REQUEST_TOPIC}-repartition"

    @property
    def topic_retention_ms(self) -> int:
        """retention.ms of the request, response, repartition and erasure topics."""
        return round((self.TOPIC_RETENTION_DAYS or self.RETENTION_DAYS) * 86_400_000)

    @property
    def dlq_retention_ms(self) -> int:
        """retention.ms of the dead-letter topic."""
        return round((self.DLQ_RETENTION_DAYS or self.RETENTION_DAYS) * 86_400_000)

    @property
    def in_flight_bytes(self) -> int:
        """MAX_IN_FLIGHT_MB in bytes."""
        return round(self.MAX_IN_FLIGHT_MB * 1024 * 1024)

    @property
    def prefetch_bytes(self) -> int:
        """Bytes of records each consumer may fetch ahead of the worker."""
        return self.in_flight_bytes // 4

    @property
    def turns_kept(self) -> int:
        """Turns a conversation holds besides its summary (CONVERSATION_TURNS_KEPT)."""
        if self.CONVERSATION_TURNS_KEPT is not None:
            return self.CONVERSATION_TURNS_KEPT
        return max(2 * self.CONTEXT_MAX_TURNS, 1)

    @property
    def answering_group(self) -> str:
        """The consumer group of the answering stage (the repartition topic's readers);
        CONSUMER_GROUP itself reads REQUEST_TOPIC and hands its records over."""
        return f"{self.CONSUMER_GROUP}-answering"

    @field_validator("REDIS_URL")
    @classmethod
    def redis_url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def database_url_usable(cls, value: str) -> str:
        from adapters.event_store import persistence_env

        persistence_env(value)  # a DatabaseUrlError (ValueError) says what is wrong
        return value

    @model_validator(mode="before")
    @classmethod
    def gather_kafka_variables(cls, data: object) -> object:
        return with_kafka_variables(data, cls.model_config.get("env_file"))  # type: ignore[arg-type]

    @field_validator("KAFKA", mode="before")
    @classmethod
    def kafka_properties(cls, value: object, info: ValidationInfo) -> KafkaSettings:
        if isinstance(value, KafkaSettings):
            return value
        return kafka_settings(value or {}, info.data.get("BOOTSTRAP_SERVER"))  # type: ignore[arg-type]

    @model_validator(mode="after")
    def check_across_settings(self) -> Settings:
        problems = []  # all of them at once, not one per start
        if self.MODEL_PROVIDER == "openai":
            if self.OPENAI_API_KEY_FILE is not None:
                # Read once to fail at start-up; the model client reads it again when it changes.
                try:
                    read_secret_file(self.OPENAI_API_KEY_FILE)
                except SecretFileError as error:
                    problems.append(f"OPENAI_API_KEY_FILE: {error}")
            elif not _filled(self.OPENAI_API_KEY):
                problems.append(
                    "OPENAI_API_KEY is not set: set it (or OPENAI_API_KEY_FILE, a file holding "
                    "it), or choose the offline model on purpose with MODEL_PROVIDER=offline"
                )
        if not _filled(self.SECRET_KEY):
            problems.append(
                "SECRET_KEY is not set: events at rest are encrypted with a key "
                "derived from it"
            )
        if (
            self.SECRET_KEY_PREVIOUS is not None
            and self.SECRET_KEY is not None
            and self.SECRET_KEY_PREVIOUS.get_secret_value() == self.SECRET_KEY.get_secret_value()
        ):
            problems.append(
                "SECRET_KEY_PREVIOUS is the same as SECRET_KEY: during a rotation it holds "
                "the key being replaced; leave it unset otherwise"
            )
        for name in ("TOPIC_RETENTION_DAYS", "DLQ_RETENTION_DAYS"):
            days = getattr(self, name)
            if days is not None and days > self.RETENTION_DAYS:
                problems.append(
                    f"{name} is {days:g} days, longer than RETENTION_DAYS ({self.RETENTION_DAYS}): "
                    "the brokers would keep what the store has forgotten"
                )
        if self.CONVERSATION_TURNS_KEPT is not None and (
            self.CONVERSATION_TURNS_KEPT <= self.CONTEXT_MAX_TURNS
        ):
            problems.append(
                f"CONVERSATION_TURNS_KEPT ({self.CONVERSATION_TURNS_KEPT}) must be more than "
                f"CONTEXT_MAX_TURNS ({self.CONTEXT_MAX_TURNS}): a summary takes in the turns "
                "that no longer fit, and they must still be there"
            )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


def _filled(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value().strip())


class SettingsError(RuntimeError):
    """Start-up configuration that cannot work; the message names the variables."""


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings, with one readable line per problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        errors = error.errors()
    invalid = {str(item["loc"][0]) for item in errors if item["loc"]}
    if invalid and all(item["loc"] for item in errors):
        # The checks across settings (keys, credentials) run only once every field
        # is valid: run them with the invalid fields at their defaults, so that one
        # start reports every problem.
        defaults = {name: Settings.model_fields[name].default for name in invalid
                    if name in Settings.model_fields}
        if "KAFKA" in defaults:
            # Not None: the before-validator would gather the same KAFKA_* variables
            # again and fail the same way, hiding the other settings' problems.
            defaults["KAFKA"] = KafkaSettings({"bootstrap.servers": "localhost:9092"})
        try:
            Settings(**{**overrides, **defaults})  # type: ignore[arg-type]
        except ValidationError as again:
            errors += [item for item in again.errors() if not item["loc"]]
    problems = []
    for item in errors:
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if item["loc"] else message)
    raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
