"""Kafka security as plain decisions: the settings' checks, MODELREG_ENV=production's refusals,
the client options every client is built with, replication defaults and the ACL table."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import pytest

from shared.broker import TOPIC_CONFIGS, replication
from shared.events import TOPICS
from shared.kafka_acls import (
    OUTSIDE_ROLES,
    REDRIVE_TOPICS,
    SERVICE_PRINCIPALS,
    SERVICE_READS,
    AclRule,
    acl_plan,
    may_write,
)
from shared.kafka_security import faststream_security, kafka_client_options, unauthenticated
from shared.settings import SettingsError, load_settings, production_refusals
from shared.stack.kafka_auth import KafkaAuth

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = ("model.ingested", "model.validated", "model.rejected", "qa.requested", "model.promoted",
            "model.demoted", "model.archived", "registry.audit", "registry.dlq")
SECURE = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "ingest",
          "kafka_sasl_password": "s3cret-from-a-vault"}
REAL_CREDENTIALS = {"database_url": "postgresql://modelreg:long-random@db:5432/modelreg",
                    "aws_access_key_id": "AKIAREAL", "aws_secret_access_key": "real-secret"}


# -- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_needs_a_username_and_a_password_named_by_variable(protocol, monkeypatch):
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    required = f"^KAFKA_SASL_USERNAME: required when KAFKA_SECURITY_PROTOCOL is {protocol}"
    with pytest.raises(SettingsError, match=required):
        load_settings(kafka_security_protocol=protocol)
    with pytest.raises(SettingsError, match="^KAFKA_SASL_PASSWORD"):
        load_settings(kafka_security_protocol=protocol, kafka_sasl_username="ingest")


def test_an_unknown_protocol_or_mechanism_is_refused():
    with pytest.raises(SettingsError, match="^KAFKA_SECURITY_PROTOCOL"):
        load_settings(kafka_security_protocol="TLS")
    with pytest.raises(SettingsError, match="^KAFKA_SASL_MECHANISM"):
        load_settings(**SECURE, kafka_sasl_mechanism="GSSAPI")


def test_a_client_certificate_needs_its_key(tmp_path):
    with pytest.raises(SettingsError, match="^KAFKA_SSL_KEYFILE"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_certfile=str(tmp_path / "client.pem"))


def test_the_password_is_secret():
    settings = load_settings(**SECURE)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


# -- MODELREG_ENV=production ------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_production_refuses_kafka_in_clear(protocol):
    extra = SECURE | {"kafka_security_protocol": protocol} if protocol.startswith("SASL") else {}
    with pytest.raises(SettingsError, match=f"^KAFKA_SECURITY_PROTOCOL: {protocol} is refused"):
        load_settings(environment="production", kafka_security_protocol=protocol, **REAL_CREDENTIALS,
                      **{k: v for k, v in extra.items() if k != "kafka_security_protocol"})


def test_production_refuses_tls_without_a_client_identity():
    with pytest.raises(SettingsError, match="^KAFKA_SSL_CERTFILE"):
        load_settings(environment="production", kafka_security_protocol="SSL", **REAL_CREDENTIALS)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_production_refuses_each_default_credential_by_name(variable, monkeypatch):
    for name in ("DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    real = {k: v for k, v in REAL_CREDENTIALS.items() if k != variable.lower()}
    with pytest.raises(SettingsError, match=f"^{variable}: the local stack's default credential"):
        load_settings(environment="production", **SECURE, **real)


def test_production_accepts_sasl_ssl_with_real_credentials():
    settings = load_settings(environment="production", **SECURE, **REAL_CREDENTIALS)
    assert production_refusals(settings) == []


def test_development_runs_plaintext_and_says_it_is_unauthenticated():
    settings = load_settings(kafka_security_protocol="PLAINTEXT")
    assert unauthenticated(settings)
    assert production_refusals(settings)  # what production would refuse, for the log
    assert not unauthenticated(load_settings(**SECURE))


# -- client options --------------------------------------------------------------------------

def test_plaintext_options_carry_no_credentials():
    options = kafka_client_options(load_settings(kafka_bootstrap_servers="k1:9092,k2:9092"))
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    assert faststream_security(load_settings()) is None


def test_sasl_ssl_options_verify_the_broker_against_the_ca(tmp_path):
    auth = KafkaAuth(tmp_path / "auth")
    auth.ensure()
    settings = load_settings(**SECURE, kafka_ssl_cafile=str(auth.ca_file))
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "ingest", "s3cret-from-a-vault")
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "modelreg local stack CA"),),)]
    security = faststream_security(settings)
    assert type(security).__name__ == "SASLScram512" and security.use_ssl
    assert security.username == "ingest" and security.password == "s3cret-from-a-vault"


def test_a_missing_ca_file_is_named():
    settings = load_settings(**SECURE, kafka_ssl_cafile="/nonexistent/ca.pem")
    with pytest.raises(SettingsError, match="^KAFKA_SSL_CAFILE: /nonexistent/ca.pem"):
        kafka_client_options(settings)


# -- topics ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (1, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_defaults_follow_the_cluster(brokers, expected):
    assert replication(load_settings(), brokers) == expected


def test_replication_from_settings_and_a_min_isr_above_it_is_refused():
    assert replication(load_settings(topic_replication_factor=5, topic_min_insync_replicas=3), 1) == (5, 3)
    with pytest.raises(ValueError, match="MODELREG_TOPIC_MIN_INSYNC_REPLICAS"):
        replication(load_settings(topic_replication_factor=2, topic_min_insync_replicas=3), 3)


def test_the_audit_topic_is_never_compacted_nor_trimmed():
    config = TOPIC_CONFIGS["registry.audit"]
    assert config["cleanup.policy"] == "delete"  # not compact
    assert config["retention.ms"] == "-1" and config["retention.bytes"] == "-1"


# -- ACLs --------------------------------------------------------------------------------------

def writes(principal: str, prefix: str = "") -> set[str]:
    return {r.name.removeprefix(prefix) for r in acl_plan(prefix)
            if r.principal == principal and r.resource == "topic" and r.operation == "WRITE"}


def reads(principal: str, prefix: str = "") -> set[str]:
    return {r.name.removeprefix(prefix) for r in acl_plan(prefix)
            if r.principal == principal and r.resource == "topic" and r.operation == "READ"}


def test_outside_roles_write_exactly_their_one_topic():
    assert writes("pipeline") == {"model.registered"}
    assert writes("qa") == {"metrics.evaluated"}
    assert writes("ops") == {"promotion.requested"}
    assert writes("reader") == set()
    assert reads("reader") == set(TOPICS)
    for role in OUTSIDE_ROLES:
        for topic in INTERNAL:
            assert not may_write(role, topic), (role, topic)


def test_services_write_only_what_they_emit_plus_audit_and_dead_letters():
    assert writes("ingest") == {"model.ingested", "model.rejected", "registry.audit", "registry.dlq"}
    assert writes("validation") == {"model.validated", "model.rejected", "qa.requested", "registry.audit",
                                    "registry.dlq"}
    assert writes("promotion") == {"model.promoted", "model.demoted", "model.rejected", "registry.audit",
                                   "registry.dlq"}
    assert writes("archival") == {"model.archived", "model.restored", "registry.audit", "registry.dlq"}
    # The audit writer redrives dead letters to the topic they were refused on (any a service
    # consumes); a redriven event keeps its signature, which consumers check.
    assert writes("audit") == {"registry.audit", "registry.dlq", *REDRIVE_TOPICS}
    assert set(REDRIVE_TOPICS) == {t for reads in SERVICE_READS.values() for t in reads}
    # The API publishes what people ask for over HTTP, never what the services decide.
    assert writes("api") == {"model.registered", "metrics.evaluated", "promotion.requested",
                             "registry.audit", "registry.dlq"}
    assert [s for s in SERVICE_PRINCIPALS if may_write(s, "model.promoted")] == ["promotion", "audit"]


def test_services_read_what_they_consume_in_their_own_group():
    for service in SERVICE_PRINCIPALS:
        assert reads(service) == set(SERVICE_READS[service])
        groups = [r for r in acl_plan("t1.") if r.principal == service and r.resource == "group"]
        assert groups == ([AclRule(service, "group", f"t1.modelreg-{service}", "READ")]
                          if SERVICE_READS[service] else [])


def test_the_reader_may_see_the_audit_writers_offsets_but_not_join_its_group():
    """`modelreg replay` runs as the reader and holds audit_log to the audit writer's committed
    offsets; describing the group reads them, reading it would let the reader commit them."""
    groups = {(r.name, r.operation) for r in acl_plan("p.") if r.principal == "reader" and r.resource == "group"}
    assert groups == {("p.reader-", "READ"), ("p.modelreg-audit", "DESCRIBE")}


def test_a_prefix_names_its_own_topics_literally():
    plan = acl_plan("t42.")
    assert all(r.pattern == "LITERAL" for r in plan if r.resource == "topic")
    assert all(r.name.startswith("t42.") for r in plan)
    assert writes("pipeline", "t42.") == {"model.registered"}
    assert not {r.name for r in acl_plan("")} & {r.name for r in plan}


def test_the_documented_acl_script_grants_the_same_table():
    """infra/kafka-acls.sh is what an operator runs on an existing cluster: it must grant what
    the registry expects, no more (read from its --dry-run, which prints the commands)."""
    out = subprocess.run(["bash", str(ROOT / "infra" / "kafka-acls.sh"), "--dry-run"], check=True,
                         capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "BOOTSTRAP": "kafka:9093",
                              "COMMAND_CONFIG": "admin.properties", "PREFIX": "p."}).stdout
    granted = set()
    for line in out.splitlines():
        words = line.split()
        principal = words[words.index("--allow-principal") + 1].removeprefix("User:")
        operation = words[words.index("--operation") + 1]
        pattern = "PREFIXED" if "prefixed" in words else "LITERAL"
        for flag, kind in (("--topic", "topic"), ("--group", "group"), ("--transactional-id", "transactional_id")):
            granted |= {AclRule(principal, kind, words[i + 1], operation, pattern)
                        for i, word in enumerate(words) if word == flag}
    assert granted == set(acl_plan("p."))


def test_the_strimzi_users_grant_the_same_table():
    import yaml

    users = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "strimzi" / "kafka-users.yaml").read_text()))
    kinds = {"transactionalId": "transactional_id"}
    granted = {AclRule(user["metadata"]["name"], kinds.get(acl["resource"]["type"], acl["resource"]["type"]),
                       acl["resource"]["name"],
                       operation.upper(), acl["resource"]["patternType"].upper())
               for user in users for acl in user["spec"]["authorization"]["acls"] for operation in acl["operations"]}
    assert granted == set(acl_plan(""))
    assert {user["spec"]["authentication"]["type"] for user in users} == {"scram-sha-512"}


def test_compose_runs_each_service_as_its_own_principal_in_production():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in SERVICE_PRINCIPALS:
        env = services[name]["environment"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["MODELREG_ENV"] == "production"
        assert env["KAFKA_SASL_USERNAME"] == name
        assert env["KAFKA_SASL_PASSWORD"] == f"${{MODELREG_KAFKA_{name.upper()}_PASSWORD}}"  # from .env
    # Every port is published on the host's loopback only.
    published = [port for service in services.values() for port in service.get("ports") or []]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published)
    # .env.example names every password the Kafka identities need.
    example = (ROOT / ".env.example").read_text()
    from shared.stack.kafka_auth import PRINCIPALS
    for principal in PRINCIPALS:
        assert f"MODELREG_KAFKA_{principal.upper()}_PASSWORD=" in example


def test_an_unauthenticated_client_is_warned_about_once_per_process(caplog, monkeypatch):
    import shared.kafka_security as kafka_security

    monkeypatch.setattr(kafka_security, "_warned_unauthenticated", False)
    with caplog.at_level("WARNING", logger="shared.kafka_security"):
        kafka_client_options(load_settings(**SECURE))
        assert not caplog.records  # authenticated: nothing to say
        kafka_client_options(load_settings(kafka_security_protocol="PLAINTEXT"))
        kafka_client_options(load_settings(kafka_security_protocol="PLAINTEXT"))
    assert len(caplog.records) == 1
    assert "KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in caplog.records[0].getMessage()
