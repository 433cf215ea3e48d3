"""One validated settings object, read from the environment; defaults match `modelreg stack up`."""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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
    # How Kafka clients authenticate (shared/kafka_security.py builds every client from these);
    # `modelreg stack credentials ROLE` prints a local stack's.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: Path | None = Field(None, validation_alias="KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: Path | None = Field(None, validation_alias="KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: Path | None = Field(None, validation_alias="KAFKA_SSL_KEYFILE")
    # Topics the registry creates; unset: 3 and 2 on a cluster of three or more brokers, else 1.
    topic_replication_factor: int | None = Field(None, ge=1, le=32,
                                                 validation_alias="MODELREG_TOPIC_REPLICATION_FACTOR")
    topic_min_insync_replicas: int | None = Field(None, ge=1, le=32,
                                                  validation_alias="MODELREG_TOPIC_MIN_INSYNC_REPLICAS")
    # "production" refuses default credentials and an unauthenticated or unencrypted bus.
    environment: Literal["development", "production"] = Field("development", validation_alias="MODELREG_ENV")
    database_url: SecretStr = Field(SecretStr(LOCAL_DATABASE_URL), validation_alias="DATABASE_URL")
    s3_endpoint_url: str | None = Field(f"http://127.0.0.1:{DEFAULT_S3_PORT}",
                                        validation_alias="S3_ENDPOINT_URL")
    s3_bucket: str = Field("modelreg", validation_alias="S3_BUCKET")
    aws_access_key_id: SecretStr = Field(SecretStr("modelreg"), validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr = Field(SecretStr("modelreg-secret"),
                                             validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_region: str = Field("us-east-1", validation_alias="AWS_REGION")
    # Server-side copies of bigger objects go as multipart UploadPartCopy (S3's CopyObject
    # stops at 5 GiB); tests set a few MiB to copy in parts on a real server.
    s3_multipart_copy_bytes: int = Field(5 * 1024**3, ge=5 * 1024**2, le=5 * 1024**3,
                                         validation_alias="MODELREG_S3_MULTIPART_COPY_BYTES")
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
    # Where they listen: loopback unless told otherwise (a container sets 0.0.0.0 for its probes).
    health_host: str = Field("127.0.0.1", min_length=1, validation_alias="MODELREG_HEALTH_HOST")
    otel_service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # Trust (shared/keys.py): this process's Ed25519 private key and the public keyring (JWKS).
    signing_key_file: Path | None = Field(None, validation_alias="MODELREG_SIGNING_KEY_FILE")
    keyring_file: Path | None = Field(None, validation_alias="MODELREG_KEYRING_FILE")
    # The PostgreSQL role a service's connections SET ROLE to (unset: modelreg_<service>);
    # "none" keeps the login user's own rights.
    db_role: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$", validation_alias="MODELREG_DB_ROLE")
    # How long each consumer keeps the ids of events it applied, to skip redeliveries: at least
    # the topics' retention plus their segment roll (shared/idempotency_pruning.py says why).
    processed_events_keep_hours: float = Field(360.0, ge=1, le=24 * 3650,
                                               validation_alias="MODELREG_PROCESSED_EVENTS_KEEP_HOURS")
    # The audit writer signs a checkpoint of the chain head every N records or T seconds.
    audit_checkpoint_records: int = Field(1000, ge=1, le=10_000_000,
                                          validation_alias="MODELREG_AUDIT_CHECKPOINT_RECORDS")
    audit_checkpoint_seconds: float = Field(60.0, gt=0, le=86_400,
                                            validation_alias="MODELREG_AUDIT_CHECKPOINT_SECONDS")
    # Webhooks (services/webhooks): networks endpoints may reach although loopback, private or
    # link-local (comma-separated addresses or CIDRs; empty: public addresses only), a request's
    # time limit and how much of an answer is read, the retry schedule (first delay, doubling up
    # to the cap: 5 s, 10 s, ... 5 min, so a receiver back from an outage waits at most about one
    # cap), and how long an endpoint may fail every attempt before it is disabled.
    webhooks_allow_networks: str = Field("", validation_alias="MODELREG_WEBHOOKS_ALLOW_NETWORKS")
    webhooks_timeout_seconds: float = Field(10.0, gt=0, le=300, validation_alias="MODELREG_WEBHOOKS_TIMEOUT_SECONDS")
    webhooks_max_response_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024,
                                             validation_alias="MODELREG_WEBHOOKS_MAX_RESPONSE_BYTES")
    webhooks_retry_first_seconds: float = Field(5.0, gt=0, le=86_400,
                                                validation_alias="MODELREG_WEBHOOKS_RETRY_FIRST_SECONDS")
    webhooks_retry_max_seconds: float = Field(300.0, gt=0, le=86_400,
                                              validation_alias="MODELREG_WEBHOOKS_RETRY_MAX_SECONDS")
    webhooks_disable_after_seconds: float = Field(86_400.0, gt=0, le=90 * 86_400,
                                                  validation_alias="MODELREG_WEBHOOKS_DISABLE_AFTER_SECONDS")
    # How long the delivery log keeps a finished delivery and its attempts (replays need it).
    webhooks_keep_days: float = Field(30.0, ge=1, le=3650, validation_alias="MODELREG_WEBHOOKS_KEEP_DAYS")

    @field_validator("webhooks_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")):
            if item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address or network (CIDR)") from None
        return value

    @model_validator(mode="after")
    def _webhook_retries(self) -> Settings:
        if self.webhooks_retry_max_seconds < self.webhooks_retry_first_seconds:
            raise ValueError("MODELREG_WEBHOOKS_RETRY_MAX_SECONDS: below MODELREG_WEBHOOKS_RETRY_FIRST_SECONDS")
        return self

    @field_validator("kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile",
                     "kafka_ssl_certfile", "kafka_ssl_keyfile", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        problem = kafka_security_problem(self)
        if problem:
            raise ValueError(problem)
        if self.environment == "production" and (refused := production_refusals(self)):
            raise ValueError(refused[0])
        return self

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


def kafka_security_problem(settings: Settings) -> str | None:
    """What is missing for the chosen KAFKA_SECURITY_PROTOCOL, naming the variable."""
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL_"):
        if not settings.kafka_sasl_username:
            return f"KAFKA_SASL_USERNAME: required when KAFKA_SECURITY_PROTOCOL is {protocol}"
        if settings.kafka_sasl_password is None or not settings.kafka_sasl_password.get_secret_value():
            return f"KAFKA_SASL_PASSWORD: required when KAFKA_SECURITY_PROTOCOL is {protocol}"
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        return "KAFKA_SSL_KEYFILE: KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mTLS)"
    return None


# Credentials that ship with the local stack: anyone can read them here, so production refuses them.
DEFAULT_CREDENTIALS: dict[str, str] = {
    "DATABASE_URL": "modelreg",  # the password in LOCAL_DATABASE_URL
    "AWS_ACCESS_KEY_ID": "modelreg",
    "AWS_SECRET_ACCESS_KEY": "modelreg-secret",
}


def production_refusals(settings: Settings) -> list[str]:
    """Why these settings may not run with MODELREG_ENV=production, each naming its variable:
    an unauthenticated or unencrypted Kafka connection, or a default credential."""
    refusals = []
    protocol = settings.kafka_security_protocol
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
        refusals.append(f"KAFKA_SECURITY_PROTOCOL: {protocol} is refused with MODELREG_ENV=production "
                        "(events and credentials would cross the network in clear); use SASL_SSL or SSL")
    elif protocol == "SSL" and not settings.kafka_ssl_certfile:
        refusals.append("KAFKA_SSL_CERTFILE: SSL without a client certificate is unauthenticated; "
                        "MODELREG_ENV=production needs SASL_SSL or a client certificate (mTLS)")
    given = {"DATABASE_URL": urlsplit(settings.dsn).password or "",
             "AWS_ACCESS_KEY_ID": settings.aws_access_key_id.get_secret_value(),
             "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key.get_secret_value()}
    for variable, default in DEFAULT_CREDENTIALS.items():
        if given[variable] == default:
            refusals.append(f"{variable}: the local stack's default credential is refused with "
                            "MODELREG_ENV=production; set a real one")
    return refusals


def read_settings(model: type[S], **overrides: Any) -> S:
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
        if not first["loc"]:
            raise SettingsError(message) from None  # a check across settings names its variable
        raise SettingsError(f"{variable}: {message}") from None


def load_settings(**overrides: object) -> Settings:
    return read_settings(Settings, **overrides)
