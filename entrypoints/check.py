"""`chater-gpt check`: can this configuration run? Asked of everything a worker
needs, without starting one: the settings (load_settings, before this module), the
broker and the topics, partitions against replicas, the store, Redis, the model
provider and the price table. Nothing is created or changed, except that a
PostgreSQL store gets its tables as a starting worker would.

One finding per line: `ok`, `warn` (it runs, but not as it should), `fail` (it
cannot run) or `skip` (not configured). The exit code is 1 when a check failed,
0 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from adapters.kafka import admin_config
from adapters.kafka_probe import probe_log
from adapters.price_file import PriceFileError, price_table
from entrypoints.health import error_name
from entrypoints.settings import Settings

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str


def run_checks(settings: Settings, replicas: int | None = None,
               timeout: float = 5.0) -> list[Finding]:
    """Every check, in the order a worker needs them at start."""
    findings = [Finding("settings", OK, f"valid (MODEL_PROVIDER={settings.MODEL_PROVIDER})")]
    findings += _broker(settings, replicas, timeout)
    findings.append(_store(settings))
    findings.append(_redis(settings, timeout))
    findings += _provider(settings, timeout)
    findings += _prices(settings)
    findings.append(_budgets(settings))
    return findings


def failed(findings: list[Finding]) -> bool:
    return any(finding.status == FAIL for finding in findings)


def report(findings: list[Finding]) -> str:
    """The findings as aligned lines, and a count of each status."""
    width = max(len(finding.check) for finding in findings)
    lines = [f"{finding.status:<4}  {finding.check:<{width}}  {finding.detail}" for finding in findings]
    counts = {status: sum(f.status == status for f in findings) for status in (OK, WARN, FAIL, SKIP)}
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items() if n) + (
        ": cannot run as configured" if counts[FAIL] else ": ready"
    ))
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> dict[str, Any]:
    return {"ready": not failed(findings), "findings": [asdict(finding) for finding in findings]}


def _millis(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f} ms"


# --- the broker, its topics, and partitions against replicas ---------------------------

def _broker(settings: Settings, replicas: int | None, timeout: float) -> list[Finding]:
    admin = AdminClient({**admin_config(settings.KAFKA), "logger": probe_log})
    started = time.perf_counter()
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as error:
        return [Finding("broker", FAIL, f"{settings.BOOTSTRAP_SERVER}: no answer within "
                        f"{timeout:g} s ({error_name(error)})")]
    findings = [Finding("broker", OK, f"{len(metadata.brokers)} broker(s) at "
                        f"{settings.BOOTSTRAP_SERVER}, {_millis(started)}")]
    partitions: dict[str, int] = {}
    request_partitions = None
    topics = [settings.REQUEST_TOPIC, settings.RESPONSE_TOPIC, settings.DLQ_TOPIC,
              settings.ERASE_TOPIC, settings.repartition_topic]
    for topic in topics:
        about = metadata.topics.get(topic)
        internal = topic == settings.repartition_topic
        if about is not None and about.error is None:
            partitions[topic] = len(about.partitions)
            findings.append(Finding(f"topic {topic}", OK, f"{len(about.partitions)} partition(s)"))
        elif internal or settings.CREATE_TOPICS:
            # As prepare_topics creates them: the repartition topic with at least the
            # request topic's partitions.
            planned = max(settings.TOPIC_PARTITIONS, request_partitions or 0) if internal \
                else settings.TOPIC_PARTITIONS
            partitions[topic] = planned
            findings.append(Finding(f"topic {topic}", OK,
                                    f"missing: the worker creates it, {planned} partition(s)"))
        else:
            findings.append(Finding(f"topic {topic}", FAIL,
                                    "missing, and CREATE_TOPICS is false: create it"))
        if topic == settings.REQUEST_TOPIC:
            request_partitions = partitions.get(topic)
    findings.append(_partitions(settings, admin, partitions, replicas, timeout))
    return findings


def _partitions(settings: Settings, admin: AdminClient, partitions: dict[str, int],
                replicas: int | None, timeout: float) -> Finding:
    """Each replica needs a partition of both stages' topics, or it idles."""
    source = "--replicas"
    if replicas is None:
        replicas = _members(admin, settings.answering_group, timeout)
        source = f"members of {settings.answering_group} now"
    if not replicas:
        return Finding("partitions", SKIP, "no replica is running: --replicas N compares")
    stages = [t for t in (settings.REQUEST_TOPIC, settings.repartition_topic) if t in partitions]
    if not stages:
        return Finding("partitions", SKIP, "the topics are not there to compare")
    fewest = min(stages, key=lambda topic: partitions[topic])
    count = partitions[fewest]
    if replicas > count:
        return Finding("partitions", WARN, f"{replicas} replicas ({source}), but {fewest} has "
                       f"{count} partition(s): {replicas - count} replica(s) would idle")
    if count % replicas:
        return Finding("partitions", OK, f"{replicas} replicas ({source}), {count} partitions of "
                       f"{fewest}: uneven, some replicas take {count // replicas + 1}")
    return Finding("partitions", OK, f"{replicas} replicas ({source}), {count} partitions of "
                   f"{fewest}: {count // replicas} each")


def _members(admin: AdminClient, group: str, timeout: float) -> int | None:
    try:
        [future] = admin.describe_consumer_groups([group], request_timeout=timeout).values()
        return len(future.result(timeout=timeout).members)
    except Exception:  # no such group, or a broker that does not describe groups
        return None


# --- the store, Redis ----------------------------------------------------------------------

def _store(settings: Settings) -> Finding:
    url = urlparse(settings.DATABASE_URL)
    if url.scheme == "sqlite":
        path = Path(unquote(url.path.removeprefix("/")))
        if not path.exists():
            return Finding("store", OK, f"SQLite {path} does not exist yet: the worker creates it")
        kind = f"SQLite {path}"
    else:
        kind = f"PostgreSQL at {url.hostname}:{url.port or 5432}"  # never the credentials
    from adapters.data_keys import KeyUnavailable
    from entrypoints.container import build_container

    started = time.perf_counter()
    records = None
    try:
        records = build_container(settings).records()
        position = records.recorder.max_notification_id() or 0
    except KeyUnavailable as error:
        return Finding("store", FAIL, f"{kind}: {error}")
    except Exception as error:
        return Finding("store", FAIL, f"{kind}: unreachable ({type(error).__name__})")
    finally:
        if records is not None:
            records.close()
    return Finding("store", OK, f"{kind}: {position} event(s), {_millis(started)}")


def _redis(settings: Settings, timeout: float) -> Finding:
    if not settings.REDIS_URL:
        return Finding("redis", SKIP, "REDIS_URL not set: rate limits count per replica, "
                       "and no response cache")
    import redis

    started = time.perf_counter()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as error:
        return Finding("redis", FAIL, f"unreachable ({type(error).__name__})")
    finally:
        client.close()
    return Finding("redis", OK, f"Redis {version}, {_millis(started)}")


# --- the model provider and the prices ------------------------------------------------------

def _configured_models(settings: Settings) -> dict[str, str]:
    """Setting name -> model, each model once."""
    models: dict[str, str] = {}
    for name in ("MODEL", "VISION_MODEL", "FALLBACK_MODEL"):
        model = getattr(settings, name)
        if model and model not in models.values():
            models[name] = model
    return models


def _provider(settings: Settings, timeout: float) -> list[Finding]:
    if settings.MODEL_PROVIDER == "offline":
        return [Finding("provider", SKIP, "MODEL_PROVIDER=offline: answers are made up here")]
    import openai

    from adapters.secret_file import api_key_source

    try:
        key = api_key_source(
            settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None,
            settings.OPENAI_API_KEY_FILE,
        ).current()
    except (OSError, ValueError) as error:
        return [Finding("provider", FAIL, f"no API key: {error}")]
    client = openai.OpenAI(api_key=key, base_url=settings.OPENAI_BASE_URL, timeout=timeout,
                           max_retries=0)
    where = settings.OPENAI_BASE_URL or "the OpenAI API"
    findings = []
    try:
        for name, model in _configured_models(settings).items():
            started = time.perf_counter()
            status, detail = _ask_for_model(lambda m=model: client.models.retrieve(m))
            findings.append(Finding(f"provider {name}", status,
                                    f"{model} at {where}: {detail or _millis(started)}"))
            if status == FAIL and detail.startswith(("refused", "no answer")):
                break  # the same for every model
    finally:
        client.close()
    return findings


def _ask_for_model(retrieve: Callable[[], Any]) -> tuple[str, str]:
    """(status, what went wrong) of asking the provider for one model."""
    import openai

    try:
        retrieve()
    except openai.NotFoundError:
        return FAIL, "not served (model_not_found): every call would fail"
    except openai.AuthenticationError:
        return FAIL, "refused the API key (401)"
    except openai.PermissionDeniedError:
        return FAIL, "refused (403): the key's project may not use it"
    except openai.RateLimitError as error:
        code = getattr(error, "code", None) or "rate_limit_exceeded"
        return WARN, f"answered 429 ({code}): calls would wait or fail now"
    except openai.APIStatusError as error:
        return FAIL, f"answered {error.status_code}"
    except openai.APIConnectionError as error:
        return FAIL, f"no answer ({type(error).__name__})"
    return OK, ""


def _prices(settings: Settings) -> list[Finding]:
    try:
        table = price_table(settings.MODEL_PRICES)
    except PriceFileError as error:
        return [Finding("prices", FAIL, f"MODEL_PRICES: {error}")]
    source = f"MODEL_PRICES {settings.MODEL_PRICES} over the shipped table" \
        if settings.MODEL_PRICES else "the shipped table"
    findings = []
    prefix = "offline:" if settings.MODEL_PROVIDER == "offline" else ""
    for name, model in _configured_models(settings).items():
        price = table.price_of(prefix + model)
        if price is None and settings.DAILY_COST_LIMIT is not None:
            findings.append(Finding(f"price {name}", FAIL, f"{model} is unpriced in {source}: "
                                    "no request can use it while DAILY_COST_LIMIT is set"))
            continue
        if price is None:
            findings.append(Finding(f"price {name}", WARN, f"{model} is unpriced in {source}: "
                                    "its calls cost null, and no dollar figure counts them"))
            continue
        cached = "" if price.cached_prompt is None else f", cached prompt ${price.cached_prompt:g}"
        findings.append(Finding(f"price {name}", OK, f"{model}: ${price.prompt:g} prompt, "
                                f"${price.completion:g} completion{cached} per million tokens "
                                f"({source})"))
    return findings


def _budgets(settings: Settings) -> Finding:
    from adapters.user_limits import UserLimitsError, read_user_limits

    said = [f"{settings.DAILY_TOKEN_LIMIT:,} tokens a day for the service"]
    if settings.DAILY_COST_LIMIT is not None:
        said.append(f"${settings.DAILY_COST_LIMIT:,.2f} a day")
    if settings.USER_DAILY_TOKEN_LIMIT is not None:
        said.append(f"{settings.USER_DAILY_TOKEN_LIMIT:,} tokens a day for each user")
    if settings.USER_TOKEN_LIMITS:
        try:
            own = read_user_limits(settings.USER_TOKEN_LIMITS)
        except UserLimitsError as error:
            return Finding("budgets", FAIL, f"USER_TOKEN_LIMITS: {error}")
        said.append(f"{len(own)} user(s) with limits of their own")
    return Finding("budgets", OK, "; ".join(said))
