"""Test infrastructure: real Kafka, PostgreSQL and S3 for the integration tests.

Endpoints are taken, in this order, from
1. the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, S3_ENDPOINT_URL all set);
2. testcontainers, when a Docker engine answers;
3. the project's own launcher (`modelreg stack up`), started here if it is not running.

Every run gets its own names (a topic prefix, a database, a bucket), so a rerun never sees
old data. An integration test that finds no infrastructure fails; it never skips.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.keys import write_keyring
from shared.settings import Settings, load_settings

RUN_ID = uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class Endpoints:
    kafka: str
    database_url: str  # a maintenance database; each run creates its own beside it
    s3_endpoint: str
    aws_access_key_id: str
    aws_secret_access_key: str
    origin: str
    # Kafka security settings (KAFKA_SECURITY_PROTOCOL, ...) of a super user, which creates the
    # run's topics and ACLs; empty: Settings' own (the environment's, else PLAINTEXT).
    kafka_admin_env: dict[str, str] = field(default_factory=dict)
    # Per principal (each service, each outside role) its Kafka security settings; empty when
    # the cluster has no per-principal credentials to hand out (then every client is the same).
    kafka_principal_env: dict[str, dict[str, str]] = field(default_factory=dict)


def _from_env() -> Endpoints | None:
    needed = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "S3_ENDPOINT_URL")
    if not all(os.environ.get(n) for n in needed):
        return None
    return Endpoints(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"],
                     os.environ["S3_ENDPOINT_URL"], os.environ.get("AWS_ACCESS_KEY_ID", "modelreg"),
                     os.environ.get("AWS_SECRET_ACCESS_KEY", "modelreg-secret"), "environment")


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def _testcontainers() -> Iterator[Endpoints]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.minio import MinioContainer
    from testcontainers.postgres import PostgresContainer

    with KafkaContainer().with_kraft() as kafka, \
            PostgresContainer("postgres:16", username="modelreg", password="modelreg",
                              dbname="modelreg", driver=None) as pg, \
            MinioContainer() as minio:
        config = minio.get_config()
        yield Endpoints(kafka.get_bootstrap_server(), pg.get_connection_url(),
                        f"http://{config['endpoint']}", config["access_key"], config["secret_key"],
                        "testcontainers")


@contextlib.contextmanager
def _local_stack() -> Iterator[Endpoints]:
    from shared.stack.launcher import LocalStack

    stack = LocalStack()
    started_here = not stack.serving()
    if started_here:
        stack.up(log=lambda line: print(f"[stack] {line}"))
    env = stack.env()
    principals: dict[str, dict[str, str]] = {}
    if stack.kafka_secured:
        from shared.stack.kafka_auth import PRINCIPALS
        stack.add_new_principals()  # a stack made before a service existed learns its principal
        principals = {name: _kafka_security(stack.kafka_env(name)) for name in PRINCIPALS}
    else:
        warnings.warn(f"the local stack in {stack.dir} runs Kafka PLAINTEXT, without ACLs (it was created "
                      "before Kafka security): `modelreg stack down --purge` then `up` secures it", stacklevel=1)
    try:
        yield Endpoints(env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_URL"], env["S3_ENDPOINT_URL"],
                        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], "local stack",
                        kafka_admin_env=_kafka_security(env), kafka_principal_env=principals)
    finally:
        # CI stops what it started; a developer's stack stays up for the next run (and for
        # other test sessions sharing it): `modelreg stack down` stops it.
        if started_here and os.environ.get("CI"):
            stack.down(log=lambda line: print(f"[stack] {line}"))


def _kafka_security(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items()
            if name.startswith("KAFKA_") and name != "KAFKA_BOOTSTRAP_SERVERS"}


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    found = _from_env()
    if found is not None:
        yield found
        return
    source = _testcontainers() if _docker_answers() else _local_stack()
    with source as found:
        yield found


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url.replace("postgresql+psycopg2://", "postgresql://"))
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
async def settings(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """Settings for this run: a fresh database, topic prefix and bucket, and a directory
    `file://` artifacts may come from."""
    import asyncpg

    database = f"modelreg_test_{RUN_ID}"
    admin_url = _with_database(endpoints.database_url, "postgres")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    # Every service's signing key and the keyring, as `modelreg stack up` makes them.
    keys_dir = tmp_path_factory.mktemp("keys")
    keyring = write_keyring(keys_dir)
    run_settings = load_settings(
        **{name.lower(): value for name, value in endpoints.kafka_admin_env.items()},
        signing_key_file=keys_dir,
        keyring_file=keyring,
        kafka_bootstrap_servers=endpoints.kafka,
        database_url=_with_database(endpoints.database_url, database),
        s3_endpoint_url=endpoints.s3_endpoint,
        s3_bucket=f"modelreg-test-{RUN_ID}",
        aws_access_key_id=endpoints.aws_access_key_id,
        aws_secret_access_key=endpoints.aws_secret_access_key,
        topic_prefix=f"t{RUN_ID}.",
        topic_partitions=3,
        policy_file=str(Path(__file__).parent / "policy.yaml"),
        archival_sweep_seconds=0.5,
        early_event_grace_seconds=5,
        health_port=0,
        artifact_roots=str(tmp_path_factory.mktemp("artifact-root")),
    )
    if endpoints.kafka_principal_env:
        from shared.kafka_acls import apply_acls, remove_acls

        await apply_acls(run_settings, run_settings.topic_prefix)  # the run's topics, per principal
    yield run_settings
    if endpoints.kafka_principal_env:
        await remove_acls(run_settings, run_settings.topic_prefix)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
