"""The one place that knows which adapter fills which port."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from dependency_injector import containers, providers

from adapters.aggregate_store import StoreOfRecords
from adapters.event_store import ChatRecords, event_store_env
from adapters.measured_model import MeasuredModel
from adapters.offline_model import OfflineModel
from adapters.openai_batch import OpenAIBatch
from adapters.openai_model import ApiKeySource, OpenAIModel
from adapters.otel_metrics import OtelMetrics
from adapters.otel_tracing import OtelTracing
from adapters.pii_detector import LibraryPiiDetector
from adapters.price_file import PriceFileError, price_table
from adapters.rate_limiter import SlidingWindowRateLimiter
from adapters.redis_rate_limiter import RedisRateLimiter
from adapters.redis_cache import RedisResponseCache
from adapters.secret_file import api_key_source
from adapters.system_clock import SystemClock
from adapters.tiktoken_counter import TiktokenCounter
from adapters.user_limits import UserLimitsError, read_user_limits
from application.batching import BatchCollector
from application.budget_ledger import BudgetLedger
from application.budgets import MICRO, Budgets
from application.chat import ChatService
from application.chat_policy import ChatPolicy
from application.circuit_breaker import CircuitBreaker
from application.model_names import ModelNames
from application.model_retries import RetryingModel
from application.model_slots import ModelSlots, admit
from application.pii import PiiMasker
from application.privacy import Privacy
from domain.pricing import PriceTable
from domain.token_budget import COST_SCOPE, SERVICE_SCOPE
from entrypoints.health import worker_checks
from entrypoints.settings import Settings, SettingsError
from entrypoints.worker import KafkaWorker


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def _response_cache(settings: Settings) -> RedisResponseCache | None:
    """The Redis response cache when REDIS_URL is set; no cache otherwise."""
    if not settings.REDIS_URL:
        return None
    return RedisResponseCache(settings.REDIS_URL, secret_key=_secret(settings.SECRET_KEY) or "")


def _rate_limiter(
    settings: Settings, metrics: OtelMetrics
) -> SlidingWindowRateLimiter | RedisRateLimiter:
    """REQUESTS_PER_MINUTE and TOKENS_PER_MINUTE for all replicas together (one
    consumer group) when REDIS_URL is set; for this process alone otherwise."""
    if not settings.REDIS_URL:
        return SlidingWindowRateLimiter(settings.REQUESTS_PER_MINUTE, settings.TOKENS_PER_MINUTE)
    return RedisRateLimiter(
        settings.REDIS_URL, settings.REQUESTS_PER_MINUTE, settings.TOKENS_PER_MINUTE,
        prefix=f"chater-gpt:{{limits:{settings.CONSUMER_GROUP}}}", metrics=metrics,
    )


def _summary_model(settings: Settings, prices: PriceTable) -> str:
    """The cheapest configured model summarises compacted context."""
    configured = [m for m in (settings.MODEL, settings.VISION_MODEL, settings.FALLBACK_MODEL) if m]
    return prices.cheapest(configured) or settings.MODEL


def _batches(settings: Settings, api_key: Callable[[], ApiKeySource]) -> BatchCollector | None:
    """The Batch API, for the OpenAI provider (the offline model answers at once)."""
    if settings.MODEL_PROVIDER != "openai":
        return None
    return BatchCollector(
        OpenAIBatch(api_key(), base_url=settings.OPENAI_BASE_URL, timeout=settings.TIMEOUT),
        window=settings.BATCH_WINDOW,
        max_requests=settings.BATCH_MAX_REQUESTS,
        poll_interval=settings.BATCH_POLL_INTERVAL,
    )


def _user_limits(path: str | None) -> dict[str, int]:
    return read_user_limits(path) if path else {}


def _budgets(settings: Settings, budgets: Any, clock: Any, prices: PriceTable,
             user_limits: dict[str, int]) -> Budgets:
    """The service's token budget, and its dollar and per-user budgets when set."""

    def ledger(scope: str, limit: int, chunk: int) -> BudgetLedger:
        return BudgetLedger(budgets, clock, limit, chunk_tokens=chunk, scope=scope,
                            lease_expiry=settings.BUDGET_LEASE_EXPIRY)

    tokens = ledger(SERVICE_SCOPE, settings.DAILY_TOKEN_LIMIT, settings.BUDGET_CHUNK_TOKENS)
    dollars = None
    if settings.DAILY_COST_LIMIT is not None:
        micro = max(round(settings.DAILY_COST_LIMIT * MICRO), 1)
        # A lease of a twentieth at most: replicas share the day's dollars finely.
        dollars = ledger(COST_SCOPE, micro, max(micro // 20, 1))
    limited = settings.USER_DAILY_TOKEN_LIMIT is not None or bool(user_limits)
    return Budgets(
        tokens, prices, dollars=dollars,
        # A user's lease: a tenth of their day at most, so their requests on other
        # replicas find room too.
        user_ledger=(lambda scope, limit: ledger(scope, limit, max(limit // 10, 1)))
        if limited else None,
        user_limit=settings.USER_DAILY_TOKEN_LIMIT, user_limits=user_limits,
        fallback_model=settings.FALLBACK_MODEL,
    )


class Container(containers.DeclarativeContainer):
    """Built from validated Settings; tests override any provider."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    prices = providers.Singleton(price_table, path=settings.provided.MODEL_PRICES)
    model_names = providers.Singleton(
        ModelNames,
        configured=providers.List(
            settings.provided.MODEL, settings.provided.VISION_MODEL, settings.provided.FALLBACK_MODEL
        ),
        prices=prices,
    )
    metrics = providers.Singleton(OtelMetrics, model_label=model_names.provided.label)
    tracing = providers.Singleton(OtelTracing)
    tracer = tracing.provided.tracer
    token_counter = providers.Singleton(TiktokenCounter)
    rate_limiter = providers.Singleton(_rate_limiter, settings=settings, metrics=metrics)
    records = providers.Singleton(
        ChatRecords,
        env=providers.Callable(
            event_store_env,
            database_url=settings.provided.DATABASE_URL,
            secret_key=providers.Callable(_secret, settings.provided.SECRET_KEY),
            previous_secret_key=providers.Callable(_secret, settings.provided.SECRET_KEY_PREVIOUS),
        ),
    )
    stores = providers.Singleton(
        StoreOfRecords, records=records, tracer=tracer,
        conversation_cache_bytes=providers.Callable(
            lambda mib: round(mib * 1024 * 1024), settings.provided.CONVERSATION_CACHE_MB
        ),
        turns_kept=settings.provided.turns_kept,
        outcomes_kept=settings.provided.CONVERSATION_OUTCOMES_KEPT,
    )
    api_key = providers.Singleton(
        api_key_source,
        key=providers.Callable(_secret, settings.provided.OPENAI_API_KEY),
        path=settings.provided.OPENAI_API_KEY_FILE,
    )
    model_client = providers.Selector(
        settings.provided.MODEL_PROVIDER,
        openai=providers.Singleton(
            OpenAIModel,
            api_key=api_key,
            base_url=settings.provided.OPENAI_BASE_URL,
            timeout=settings.provided.TIMEOUT,
            max_retries=0,  # the SDK's own retry loop would hide and double ours
            max_connections=settings.provided.MAX_IN_FLIGHT,
        ),
        offline=providers.Singleton(OfflineModel, counter=token_counter),
    )
    measured_model = providers.Singleton(
        MeasuredModel, model=model_client, metrics=metrics, prices=prices, tracer=tracer,
        model_label=model_names.provided.label,
    )
    circuit_breaker = providers.Singleton(
        CircuitBreaker,
        model=measured_model,
        failure_threshold=settings.provided.CIRCUIT_FAILURE_THRESHOLD,
        probe_interval=settings.provided.CIRCUIT_PROBE_INTERVAL,
    )
    language_model = providers.Singleton(
        RetryingModel,
        model=circuit_breaker,
        max_retries=settings.provided.MAX_RETRIES,
        fallback_model=settings.provided.FALLBACK_MODEL,
        pace=providers.Callable(partial, admit, rate_limiter),  # each retry's own admission
        holds_back=circuit_breaker.provided.holds_back,
    )
    policy = providers.Singleton(
        ChatPolicy,
        model=settings.provided.MODEL,
        vision_model=settings.provided.VISION_MODEL,
        max_tokens=settings.provided.MAX_TOKENS,
        temperature=settings.provided.TEMPERATURE,
        context_max_tokens=settings.provided.CONTEXT_MAX_TOKENS,
        context_max_turns=settings.provided.CONTEXT_MAX_TURNS,
        retention_days=settings.provided.RETENTION_DAYS,
        pii_mode=settings.provided.PII_MODE,
        prices=prices,
        cache_ttl=settings.provided.CACHE_TTL,
        cache_any_temperature=settings.provided.CACHE_ANY_TEMPERATURE,
        cache_scope=settings.provided.CACHE_SCOPE,
        context_strategy=settings.provided.CONTEXT_STRATEGY,
        summary_model=providers.Callable(_summary_model, settings=settings, prices=prices),
        batch_priority=settings.provided.BATCH_PRIORITY,
        call_timeout=settings.provided.TIMEOUT,
    )
    response_cache = providers.Singleton(_response_cache, settings=settings)
    model_slots = providers.Singleton(
        ModelSlots,
        rate_limiter=rate_limiter,
        concurrency=settings.provided.MODEL_CONCURRENCY,
        aging_seconds=settings.provided.PRIORITY_AGING,
    )
    batches = providers.Singleton(_batches, settings=settings, api_key=api_key.provider)
    pii_masker = providers.Singleton(PiiMasker, detector=providers.Singleton(LibraryPiiDetector))
    user_limits = providers.Singleton(_user_limits, path=settings.provided.USER_TOKEN_LIMITS)
    ledger = providers.Singleton(
        _budgets, settings=settings, budgets=stores.provided.budgets, clock=clock, prices=prices,
        user_limits=user_limits,
    )
    chat_service = providers.Singleton(
        ChatService,
        conversations=stores.provided.conversations,
        ledger=ledger,
        model=language_model,
        counter=token_counter,
        rate_limiter=rate_limiter,
        clock=clock,
        policy=policy,
        tracer=tracer,
        pii=pii_masker,
        cache=response_cache,
        slots=model_slots,
        batches=batches,
        metrics=metrics,
        batch_records=stores.provided.batches,
        max_parked=settings.provided.BATCH_MAX_WAITING,
    )
    privacy = providers.Singleton(
        Privacy,
        conversations=stores.provided.conversations,
        ledgers=stores.provided.ledgers,
        keys=records.provided.data_keys,
        clock=clock,
        cache=response_cache,
    )
    worker = providers.Singleton(
        KafkaWorker,
        service=chat_service,
        settings=settings,
        clock=clock,
        metrics=metrics,
        tracer=tracer,
        privacy=privacy,
        model_label=model_names.provided.label,
    )
    health = providers.Singleton(
        worker_checks, worker=worker, records=records, circuit_breaker=circuit_breaker,
        model_label=model_names.provided.label,
    )


def build_container(settings: Settings) -> Container:
    container = Container(settings=settings)
    try:
        container.prices()  # a bad price file stops the start, not the first reply
    except PriceFileError as error:
        raise SettingsError(f"invalid configuration:\n  MODEL_PRICES: {error}") from None
    try:
        container.user_limits()
    except UserLimitsError as error:
        raise SettingsError(f"invalid configuration:\n  USER_TOKEN_LIMITS: {error}") from None
    return container
