"""KAFKA_* variables → librdkafka settings (adapters.kafka), checked by librdkafka itself."""

from __future__ import annotations

import logging
import socket

import pytest
from confluent_kafka import Consumer, Producer

from adapters.kafka import (
    CLASSIC_PROTOCOL_ONLY,
    DEFAULT_COMPRESSION,
    KafkaSettingsError,
    admin_config,
    consumer_config,
    kafka_settings,
    producer_config,
)
from entrypoints.settings import SettingsError, load_settings

BOOTSTRAP = "kafka-0.example:9093"


def test_each_variable_is_a_property_upper_cased_with_underscores_for_dots() -> None:
    kafka = kafka_settings({
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none",
        "KAFKA_SOCKET_KEEPALIVE_ENABLE": "true",
        "OTHER_SETTING": "ignored",
    }, BOOTSTRAP)
    admin = admin_config(kafka)
    assert admin["bootstrap.servers"] == BOOTSTRAP
    assert admin["security.protocol"] == "SSL"
    assert admin["ssl.endpoint.identification.algorithm"] == "none"
    assert admin["socket.keepalive.enable"] == "true"
    assert "other.setting" not in admin


def test_they_apply_to_consumers_producers_and_admin_clients_each_kind_only_its_own() -> None:
    kafka = kafka_settings({
        "KAFKA_SASL_MECHANISM": "PLAIN",  # every client
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "chater",
        "KAFKA_SASL_PASSWORD": "pw",
        "KAFKA_FETCH_MIN_BYTES": "10",  # consumers only
        "KAFKA_COMPRESSION_TYPE": "gzip",  # producers only
    }, BOOTSTRAP)
    consumer, producer, admin = consumer_config(kafka, "g"), producer_config(kafka), admin_config(kafka)
    for config in (consumer, producer, admin):
        assert config["sasl.mechanism"] == "PLAIN" and config["sasl.password"] == "pw"
    assert consumer["fetch.min.bytes"] == "10" and "fetch.min.bytes" not in producer
    assert producer["compression.type"] == "gzip" and "compression.type" not in consumer
    assert "fetch.min.bytes" not in admin and "compression.type" not in admin


def test_no_client_warns_about_a_property_of_the_other_kind() -> None:
    kafka = kafka_settings({
        "KAFKA_FETCH_WAIT_MAX_MS": "10", "KAFKA_LINGER_MS": "2", "KAFKA_GROUP_PROTOCOL": "classic",
    }, "127.0.0.1:9")
    lines: list[str] = []

    class Lines:
        def log(self, level, message, *args) -> None:  # what confluent-kafka calls
            lines.append(message % args if args else message)

    for client in (Producer({**producer_config(kafka), "logger": Lines()}),
                   Consumer({**consumer_config(kafka, "g"), "logger": Lines()})):
        client.poll(0)
    assert not [line for line in lines if "will be ignored" in line], lines


def test_the_worker_defaults_are_defaults_and_production_keeps_librdkafka_fetch_wait() -> None:
    plain = kafka_settings({}, BOOTSTRAP)
    assert "fetch.wait.max.ms" not in consumer_config(plain, "g")
    assert producer_config(plain)["compression.type"] == DEFAULT_COMPRESSION == "none"
    assert consumer_config(plain, "g")["session.timeout.ms"] == 6000
    tuned = kafka_settings({"KAFKA_SESSION_TIMEOUT_MS": "45000", "KAFKA_FETCH_WAIT_MAX_MS": "10"}, BOOTSTRAP)
    assert consumer_config(tuned, "g")["session.timeout.ms"] == "45000"
    assert consumer_config(tuned, "g")["fetch.wait.max.ms"] == "10"


def test_the_consumers_fetch_ahead_a_quarter_of_max_in_flight_mb_unless_the_operator_says() -> None:
    settings = load_settings(BOOTSTRAP_SERVER=BOOTSTRAP, SECRET_KEY="s", MODEL_PROVIDER="offline",
                             MAX_IN_FLIGHT_MB=64)
    config = consumer_config(settings.KAFKA, "g", settings.prefetch_bytes)
    assert config["queued.max.messages.kbytes"] == 16 * 1024
    assert config["fetch.max.bytes"] == 16 * 1024 * 1024
    Consumer({**config, "bootstrap.servers": "127.0.0.1:1"}).close()  # librdkafka takes them
    small = consumer_config(settings.KAFKA, "g", 100_000)  # never below message.max.bytes
    assert small["fetch.max.bytes"] == 1_000_000
    Consumer({**small, "bootstrap.servers": "127.0.0.1:1"}).close()
    large_records = kafka_settings({"KAFKA_MESSAGE_MAX_BYTES": "20000000"}, BOOTSTRAP)
    assert consumer_config(large_records, "g", 100_000)["fetch.max.bytes"] == 20_000_000
    operator = kafka_settings({"KAFKA_QUEUED_MAX_MESSAGES_KBYTES": "1024",
                               "KAFKA_FETCH_MAX_BYTES": "5000000"}, BOOTSTRAP)
    config = consumer_config(operator, "g", 100_000_000)
    assert (config["queued.max.messages.kbytes"], config["fetch.max.bytes"]) == ("1024", "5000000")


def test_client_id_names_the_replica_unless_set() -> None:
    assert admin_config(kafka_settings({}, BOOTSTRAP))["client.id"] == f"chater-gpt-{socket.gethostname()}"
    assert admin_config(kafka_settings({"KAFKA_CLIENT_ID": "gpt-7"}, BOOTSTRAP))["client.id"] == "gpt-7"


def test_secrets_come_from_files_and_are_never_shown(tmp_path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cr3t-from-file\n")
    kafka = kafka_settings({
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "chater",
        "KAFKA_SASL_PASSWORD": "s3cr3t-inline",  # the file wins, as OPENAI_API_KEY_FILE does
        "KAFKA_SASL_PASSWORD_FILE": str(password),
    }, BOOTSTRAP)
    assert producer_config(kafka)["sasl.password"] == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(kafka)
    settings = load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline", KAFKA_SASL_PASSWORD="s3cr3t",
                             KAFKA_SASL_USERNAME="u", KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                             KAFKA_SASL_MECHANISM="PLAIN")
    assert settings.KAFKA.common["sasl.password"] == "s3cr3t"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())
    with pytest.raises(KafkaSettingsError, match="KAFKA_SSL_KEY_PASSWORD_FILE: cannot read"):
        kafka_settings({"KAFKA_SSL_KEY_PASSWORD_FILE": str(tmp_path / "missing")}, BOOTSTRAP)


def test_a_refused_value_names_its_variable_never_a_secret() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline", KAFKA_SASL_PASSWORD="s3cr3t",
                      KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="PLAIN")
    assert "KAFKA_SASL_PASSWORD" in str(refused.value) and "s3cr3t" not in str(refused.value)


def test_the_new_group_protocol_leaves_out_what_it_forbids() -> None:
    kafka = kafka_settings({"KAFKA_GROUP_PROTOCOL": "consumer"}, "127.0.0.1:9")
    config = consumer_config(kafka, "g")
    assert config["group.protocol"] == "consumer"
    assert not set(CLASSIC_PROTOCOL_ONLY) & set(config)
    Consumer(config).close()  # librdkafka takes it (it refuses session.timeout.ms with it)
    with pytest.raises(KafkaSettingsError, match="KAFKA_SESSION_TIMEOUT_MS"):
        kafka_settings({"KAFKA_GROUP_PROTOCOL": "consumer", "KAFKA_SESSION_TIMEOUT_MS": "6000"}, BOOTSTRAP)


@pytest.mark.parametrize("name, value", [
    ("KAFKA_ACKS", "most"),  # no such value
    ("KAFKA_FETCH_MIN_BYTES", "lots"),
])
def test_a_value_librdkafka_refuses_fails_at_start_naming_the_variable(name, value) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline", **{name: value})
    assert f"{name}: refused by librdkafka" in str(refused.value)


def test_variables_that_are_not_librdkafka_properties_are_left_out_with_one_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="adapters.kafka"):
        kafka = kafka_settings({
            "KAFKA_HEAP_OPTS": "-Xmx1G -Xms1G",  # a Kafka image's own variables
            "KAFKA_LOG4J_OPTS": "-Dlog4j.configuration=file:/opt/log4j.properties",
            "KAFKA_LINGER_MS": "7",
        }, BOOTSTRAP)
    assert producer_config(kafka)["linger.ms"] == "7"
    assert "heap.opts" not in admin_config(kafka) and "log4j.opts" not in producer_config(kafka)
    warnings = [r.getMessage() for r in caplog.records if r.name == "adapters.kafka"]
    assert len(warnings) == 1, warnings
    assert "KAFKA_HEAP_OPTS" in warnings[0] and "KAFKA_LOG4J_OPTS" in warnings[0]
    assert "Xmx" not in warnings[0] and "log4j.properties" not in warnings[0]  # no values
    assert load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline", KAFKA_JVM_PERFORMANCE_OPTS="-server")


def test_a_file_variable_that_is_a_property_itself_passes_through(tmp_path) -> None:
    key = tmp_path / "assertion.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    kafka = kafka_settings({
        "KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE": str(key),  # a path librdkafka reads
        "KAFKA_SASL_PASSWORD_FILE": str(key),  # sasl.password.file: no such property, a secret file
    }, BOOTSTRAP)
    config = admin_config(kafka)
    assert config["sasl.oauthbearer.assertion.private.key.file"] == str(key)
    assert "sasl.oauthbearer.assertion.private.key" not in config
    assert config["sasl.password"] == "-----BEGIN PRIVATE KEY-----"


def test_a_bad_kafka_variable_is_reported_with_the_other_settings_problems(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(SettingsError) as refused:
        load_settings(MODEL_PROVIDER="offline", KAFKA_ACKS="most")
    assert "KAFKA_ACKS: refused by librdkafka" in str(refused.value)
    assert "SECRET_KEY is not set" in str(refused.value)


def test_the_worker_own_settings_are_not_overridden() -> None:
    with pytest.raises(KafkaSettingsError, match="KAFKA_GROUP_ID: not settable .*CONSUMER_GROUP"):
        kafka_settings({"KAFKA_GROUP_ID": "other"}, BOOTSTRAP)
    with pytest.raises(KafkaSettingsError, match="KAFKA_ENABLE_AUTO_COMMIT"):
        kafka_settings({"KAFKA_ENABLE_AUTO_COMMIT": "true"}, BOOTSTRAP)
    with pytest.raises(KafkaSettingsError, match="KAFKA_TRANSACTIONAL_ID: not settable .*transactions"):
        kafka_settings({"KAFKA_TRANSACTIONAL_ID": "one-for-all"}, BOOTSTRAP)


def test_kubernetes_service_links_and_blank_variables_are_not_properties(caplog) -> None:
    links = {  # Services named kafka, kafka-ui, kafka-exporter, kafka-kafka-bootstrap (Strimzi)
        "KAFKA_PORT": "tcp://10.0.0.7:9092", "KAFKA_PORT_9092_TCP_ADDR": "10.0.0.7",
        "KAFKA_SERVICE_HOST": "10.0.0.7", "KAFKA_SERVICE_PORT": "9092",
        "KAFKA_SERVICE_PORT_TCP_CLIENTS": "9092",
        "KAFKA_UI_SERVICE_HOST": "10.0.0.8", "KAFKA_UI_PORT": "tcp://10.0.0.8:8080",
        "KAFKA_UI_PORT_8080_TCP_PROTO": "tcp",
        "KAFKA_EXPORTER_SERVICE_PORT": "9308", "KAFKA_EXPORTER_SERVICE_PORT_METRICS": "9308",
        "KAFKA_KAFKA_BOOTSTRAP_PORT_9092_TCP_ADDR": "10.0.0.9",
        "KAFKA_KAFKA_BOOTSTRAP_PORT_9093_UDP": "udp://10.0.0.9:9093",
        "KAFKA_KAFKA_BOOTSTRAP_PORT_9094_SCTP_PORT": "9094",
    }
    with caplog.at_level(logging.WARNING, logger="adapters.kafka"):
        kafka = kafka_settings({**links, "KAFKA_LINGER_MS": " "}, BOOTSTRAP)
    assert set(admin_config(kafka)) == {"bootstrap.servers", "client.id", "log.connection.close"}
    assert not [r for r in caplog.records if r.name == "adapters.kafka"]  # skipped, not warned about
    assert load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline", **links).KAFKA is not None


def test_kafka_bootstrap_servers_is_bootstrap_server_other_name(monkeypatch) -> None:
    base = {"SECRET_KEY": "k", "MODEL_PROVIDER": "offline"}
    settings = load_settings(**base, KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP)
    assert settings.BOOTSTRAP_SERVER == BOOTSTRAP == settings.KAFKA.bootstrap_servers
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP)
    assert load_settings(**base).BOOTSTRAP_SERVER == BOOTSTRAP
    assert load_settings(**base, BOOTSTRAP_SERVER=BOOTSTRAP).KAFKA.bootstrap_servers == BOOTSTRAP
    with pytest.raises(SettingsError, match="BOOTSTRAP_SERVER .* and KAFKA_BOOTSTRAP_SERVERS .* differ"):
        load_settings(**base, BOOTSTRAP_SERVER="other:9092")


def test_the_environment_and_dotenv_file_are_read(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KAFKA_LINGER_MS=7\nKAFKA_CLIENT_ID=from-file\n")
    monkeypatch.setenv("KAFKA_CLIENT_ID", "from-environment")
    settings = load_settings(SECRET_KEY="k", MODEL_PROVIDER="offline")
    assert producer_config(settings.KAFKA)["linger.ms"] == "7"
    assert admin_config(settings.KAFKA)["client.id"] == "from-environment"
