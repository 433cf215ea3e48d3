"""Settings: defaults match the local stack; a wrong value names its variable in one line."""

from __future__ import annotations

import pytest

from shared.settings import SettingsError, load_settings


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "S3_ENDPOINT_URL", "S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.dsn.startswith("postgresql://") and ":5432/" in settings.dsn
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.topic("model.registered") == "model.registered"


@pytest.mark.parametrize("variable,value", [
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
    ("KAFKA_BOOTSTRAP_SERVERS", "host:99999"),
    ("DATABASE_URL", "mysql://u:p@h/db"),
    ("S3_ENDPOINT_URL", "ftp://x"),
    ("S3_BUCKET", "Has_Upper"),
    ("MODELREG_TOPIC_PREFIX", "bad prefix!"),
    ("MODELREG_TOPIC_PARTITIONS", "zero"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc-host:4317"),
])
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message


def test_secrets_do_not_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db:5432/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    text = repr(load_settings())
    assert "hunter2" not in text and "s3cr3t" not in text


def test_prefix_namespaces_topics_and_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELREG_TOPIC_PREFIX", "ci-7.")
    settings = load_settings()
    assert settings.topic("registry.audit") == "ci-7.registry.audit"
    assert settings.group_id("ingest") == "ci-7.modelreg-ingest"
