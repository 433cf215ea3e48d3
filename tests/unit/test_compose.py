"""docker-compose.yml and infra/Dockerfile: read, not run (no Docker needed)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"

INFRASTRUCTURE = ("kafka", "postgres", "minio")
SERVICES = ("ingest", "validation", "promotion", "archival", "audit", "webhooks", "api")
OPTIONAL_VARIABLES = {"MODELREG_TOPIC_PREFIX", "MODELREG_TOPIC_PARTITIONS", "MODELREG_ARTIFACT_ROOTS",
                      "MODELREG_ALLOWED_BUCKETS", "OTEL_EXPORTER_OTLP_ENDPOINT",
                      # mTLS: compose's services authenticate with SASL instead
                      "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE",
                      # each service acts as its own PostgreSQL role (modelreg_<service>) by default
                      "MODELREG_DB_ROLE",
                      # empty: webhook endpoints reach public addresses only (the safe default)
                      "MODELREG_WEBHOOKS_ALLOW_NETWORKS"}
REQUIRED_VARIABLES = sorted(
    str(field.validation_alias) for field in Settings.model_fields.values()
    if field.validation_alias is not None and str(field.validation_alias) not in OPTIONAL_VARIABLES
)


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or a list."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in raw)
        raw = dict(pairs)
    return {str(k): (None if v is None else str(v)) for k, v in raw.items()}


def command(service: dict) -> list[str]:
    raw = service.get("command")
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw or []]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_required_variables_are_derived_from_settings():
    # Guards the derivation itself: if it came out empty the per-service checks would prove nothing.
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "AWS_ACCESS_KEY_ID"} <= set(REQUIRED_VARIABLES)
    assert not OPTIONAL_VARIABLES & set(REQUIRED_VARIABLES)


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_infrastructure_has_healthchecks(compose, name):
    service = compose["services"].get(name)
    assert service is not None, f"{name} is missing from docker-compose.yml"
    assert service.get("image"), f"{name} has no image"
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), f"{name}'s healthcheck is disabled"
    test = check.get("test")
    assert test and test != ["NONE"], f"{name} has no healthcheck test"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


def test_infrastructure_data_lives_in_named_volumes(compose):
    named = set(compose.get("volumes") or {})
    for name in INFRASTRUCTURE:
        mounts = compose["services"][name].get("volumes") or []
        sources = {(m.split(":", 1)[0] if isinstance(m, str) else m.get("source")) for m in mounts}
        assert sources & named, f"{name} keeps its data in no named volume"


def test_minio_init_creates_the_bucket_after_minio_is_healthy(compose):
    services = compose["services"]
    init_name = next((n for n in ("minio-init", "createbuckets") if n in services), None)
    assert init_name, "no one-shot container creates the bucket"
    init = services[init_name]
    assert str(init.get("image", "")).startswith("minio/mc")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(command(init) + [str(part) for part in init.get("entrypoint") or []])
    bucket = environment(services["ingest"])["S3_BUCKET"]
    assert "mc mb" in script
    if "$$S3_BUCKET" in script:
        assert environment(init).get("S3_BUCKET") == bucket
    else:
        assert f"/{bucket}" in script, f"{init_name} does not create bucket {bucket!r}"


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_built_from_the_shared_image_and_runs_itself(compose, name):
    service = compose["services"].get(name)
    assert service is not None, f"{name} is missing from docker-compose.yml"
    build = service.get("build")
    assert isinstance(build, dict), f"{name} must build from infra/Dockerfile"
    assert build.get("context") in (".", "./")
    assert build.get("dockerfile") == "infra/Dockerfile"
    assert command(service)[:2] == ["run", name]
    assert service.get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", SERVICES)
def test_service_waits_for_healthy_infrastructure(compose, name):
    depends_on = compose["services"][name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions, not a list"
    for dependency in INFRASTRUCTURE:
        assert dependency in depends_on, f"{name} does not depend on {dependency}"
        assert depends_on[dependency].get("condition") == "service_healthy"
    if "minio-init" in depends_on:
        assert depends_on["minio-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_service_gets_every_setting(compose, name, monkeypatch):
    env = environment(compose["services"][name])
    missing = [v for v in REQUIRED_VARIABLES if not env.get(v)]
    assert not missing, f"{name} does not set {missing}"
    assert env["OTEL_SERVICE_NAME"] == f"modelreg-{name}"
    assert env.get("MODELREG_HEALTH_PORT", "").isdigit()

    # The values are ones the service will accept, and they point at the compose services.
    for variable in Settings.model_fields.values():
        monkeypatch.delenv(str(variable.validation_alias), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    hosts = {server.rsplit(":", 1)[0] for server in settings.kafka_bootstrap_servers.split(",")}
    assert hosts == {"kafka"}
    assert urlsplit(settings.dsn).hostname == "postgres"
    assert urlsplit(settings.s3_endpoint_url or "").hostname == "minio"


def _shared(env: dict) -> dict:
    """What every service must agree on: all but its own name, its Kafka principal and the API's
    listener."""
    own = ("OTEL_SERVICE_NAME", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
    return {k: v for k, v in env.items() if k not in own and not k.startswith("MODELREG_API_")}


def test_services_share_one_environment(compose):
    envs = {name: environment(compose["services"][name]) for name in SERVICES}
    common = _shared(envs["ingest"])
    for name, env in envs.items():
        assert _shared(env) == common, name


def test_the_api_listens_where_its_port_is_published(compose):
    api = compose["services"]["api"]
    env = environment(api)
    assert env["MODELREG_API_HOST"] == "0.0.0.0"  # reachable from outside its container
    assert f"127.0.0.1:{env['MODELREG_API_PORT']}:{env['MODELREG_API_PORT']}" in api["ports"]


def test_aws_credentials_are_minios_root_user(compose):
    minio = environment(compose["services"]["minio"])
    assert minio.get("MINIO_ROOT_USER") and minio.get("MINIO_ROOT_PASSWORD")
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter ones
    for name in SERVICES:
        env = environment(compose["services"][name])
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name


def test_database_url_matches_postgres(compose):
    pg = environment(compose["services"]["postgres"])
    url = urlsplit(environment(compose["services"]["ingest"])["DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])


@pytest.mark.parametrize("name", SERVICES)
def test_policy_file_is_mounted_read_only(compose, name):
    service = compose["services"][name]
    target = environment(service)["MODELREG_POLICY_FILE"]
    for mount in service.get("volumes") or []:
        if isinstance(mount, str):
            source, _, rest = mount.partition(":")
            mount_target, _, mode = rest.partition(":")
            read_only = "ro" in mode.split(",")
        else:
            source, mount_target, read_only = mount.get("source"), mount.get("target"), mount.get("read_only")
        if mount_target == target:
            assert source in ("./infra/policy.yaml", "infra/policy.yaml")
            assert read_only, f"{name} mounts the policy writable"
            return
    pytest.fail(f"{name} does not mount the policy file at {target}")


def test_api_is_published_on_8080(compose):
    ports = [str(p) for p in compose["services"]["api"].get("ports") or []]
    assert any(p.split(":")[-2:] == ["8080", "8080"] for p in ports), ports


def test_kafka_advertises_an_address_for_containers_and_one_for_the_host(compose, tmp_path):
    # Kafka starts from what the kafka-auth one-shot writes (`modelreg stack kafka-auth`).
    from shared.stack.compose_kafka import write_compose_kafka

    kafka = compose["services"]["kafka"]
    assert kafka["entrypoint"][-1] == "/kafka-auth/start.sh"
    assert kafka["depends_on"]["kafka-auth"]["condition"] == "service_completed_successfully"
    write_compose_kafka(tmp_path / "auth", tmp_path / "ca", None)
    properties = dict(line.split("=", 1) for line in (tmp_path / "auth" / "server.properties").read_text().splitlines()
                      if "=" in line)
    assert properties["process.roles"] == "broker,controller"
    advertised = properties["advertised.listeners"]
    assert "//kafka:9092" in advertised and "//localhost:9092" in advertised
    assert properties["listener.security.protocol.map"].count("SASL_SSL") == 2


def test_dockerfile_runs_modelreg_as_a_non_root_user():
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the Dockerfile has no USER line"
    user = users[-1].split(":", 1)[0]
    assert user and user not in ("root", "0"), f"the image runs as {user!r}"

    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    raw = entrypoints[-1]
    argv = json.loads(raw) if raw.startswith("[") else shlex.split(raw)
    assert argv and Path(argv[0]).name == "modelreg"

    cmds = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["run", "ingest"]

    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for path in ("pyproject.toml", "README.m", "shared/", "services/", "schemas/"):
        assert path in copied, f"the Dockerfile does not copy {path}"
