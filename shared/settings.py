"""One validated settings object, read from the environment; defaults match `modelreg stack up`."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

# Default ports of the local stack; `modelreg stack up --*-port` changes them and `stack status`
# prints the matching exports.
DEFAULT_KAFKA_PORT = 9092
DEFAULT_POSTGRES_PORT = 5432
DEFAULT_S3_PORT = 9000
LOCAL_DATABASE_URL = f"postgresql://modelreg:modelreg@127.0.0.1:{DEFAULT_POSTGRES_PORT}/modelreg"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,64}$")


class SettingsError(Exception):
    """A setting is missing or wrong; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True,
                                      populate_by_name=True)

    kafka_bootstrap_servers: str = Field(f"127.0.0.1:{DEFAULT_KAFKA_PORT}",
                                         validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: SecretStr = Field(SecretStr(LOCAL_DATABASE_URL), validation_alias="DATABASE_URL")
    s3_endpoint_url: str | None = Field(f"http://127.0.0.1:{DEFAULT_S3_PORT}",
                                        validation_alias="S3_ENDPOINT_URL")
    s3_bucket: str = Field("modelreg", validation_alias="S3_BUCKET")
    aws_access_key_id: SecretStr = Field(SecretStr("modelreg"), validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr = Field(SecretStr("modelreg-secret"),
                                             validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_region: str = Field("us-east-1", validation_alias="AWS_REGION")
    policy_file: Path | None = Field(None, validation_alias="MODELREG_POLICY_FILE")
    # Integration tests and shared clusters namespace every topic and consumer group with this.
    topic_prefix: str = Field("", validation_alias="MODELREG_TOPIC_PREFIX")
    topic_partitions: int = Field(6, ge=1, le=1024, validation_alias="MODELREG_TOPIC_PARTITIONS")
    # Where `file://` artifacts may come from, and which foreign buckets ingest may read.
    artifact_roots: str = Field("", validation_alias="MODELREG_ARTIFACT_ROOTS")
    allowed_buckets: str = Field("", validation_alias="MODELREG_ALLOWED_BUCKETS")
    archival_sweep_seconds: float = Field(60.0, gt=0, le=86_400,
                                          validation_alias="MODELREG_ARCHIVAL_SWEEP_SECONDS")
    # How long promotion holds an event about a version it has not seen yet (it may be on
    # another topic, behind) before dead-lettering it as an unknown version.
    early_event_grace_seconds: float = Field(10.0, gt=0, le=86_400,
                                             validation_alias="MODELREG_EARLY_EVENT_GRACE_SECONDS")
    # Each service's /healthz, /readyz and /metrics; unset: a port per service (8081-8085);
    # 0: any free port.
    health_port: int | None = Field(None, ge=0, le=65535, validation_alias="MODELREG_HEALTH_PORT")
    otel_service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # Trust (shared/keys.py): this process's Ed25519 private key and the public keyring (JWKS).
    signing_key_file: Path | None = Field(None, validation_alias="MODELREG_SIGNING_KEY_FILE")
    keyring_file: Path | None = Field(None, validation_alias="MODELREG_KEYRING_FILE")
    # The PostgreSQL role a service's connections SET ROLE to (unset: modelreg_<service>);
    # "none" keeps the login user's own rights.
    db_role: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$", validation_alias="MODELREG_DB_ROLE")
    # The audit writer signs a checkpoint of the chain head every N records or T seconds.
    audit_checkpoint_records: int = Field(1000, ge=1, le=10_000_000,
                                          validation_alias="MODELREG_AUDIT_CHECKPOINT_RECORDS")
    audit_checkpoint_seconds: float = Field(60.0, gt=0, le=86_400,
                                            validation_alias="MODELREG_AUDIT_CHECKPOINT_SECONDS")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("expected host:port[,host:port...]")
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("expected postgresql://user:password@host:port/database")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None  # AWS itself
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s):// URL")
        return value.rstrip("/")

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value):
            raise ValueError("not a valid S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only, at most 64")
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otlp(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http(s):// URL")
        return value or None

    @cached_property
    def artifact_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p).resolve() for p in self.artifact_roots.split(":") if p)

    @cached_property
    def allowed_bucket_names(self) -> frozenset[str]:
        return frozenset(b.strip() for b in self.allowed_buckets.split(",") if b.strip()) | {self.s3_bucket}

    def topic(self, name: str) -> str:
        """The Kafka topic that carries contract topic `name` on this deployment."""
        return f"{self.topic_prefix}{name}"

    def group_id(self, service: str) -> str:
        return f"{self.topic_prefix}modelreg-{service}"

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()


def read_settings(model: type[S], **overrides: object) -> S:
    """Read a settings class from the environment; a wrong value raises `SettingsError`
    naming the variable, in one line."""
    try:
        return model(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        declared = model.model_fields.get(field)
        variable = str(declared.validation_alias) if declared and declared.validation_alias else field.upper()
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{variable}: {message}") from None


def load_settings(**overrides: object) -> Settings:
    return read_settings(Settings, **overrides)
