"""A pipeline of a phase's own on a stack: its own database, topic prefix (with its ACLs) and
bucket, so the service processes a phase starts consume nothing anyone else publishes, join
no one else's consumer groups and extend no one else's audit chain (the audit writer's signed
checkpoints in the bucket must be its own). `remove()` deletes all three afterwards.

Used by the soak (which kills its own services) and the scale-out phase (which runs two of each).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import SecretStr

from shared.broker import ensure_topics, make_admin
from shared.db import migrate
from shared.kafka_acls import apply_acls, remove_acls
from shared.settings import Settings
from shared.stack import postgres
from shared.storage import ObjectStore


@dataclass(frozen=True)
class OwnPipeline:
    settings: Settings   # the benchmark's client settings, pointed at the pipeline's own parts
    postgres_port: int
    database: str

    @classmethod
    def of(cls, settings: Settings, postgres_port: int, kind: str, run_id: str) -> OwnPipeline:
        """Names of one phase (`kind`) of one run: database modelreg_bench_KIND_RUN, topic prefix
        bKINDRUN., bucket bench-KIND-RUN."""
        database = f"modelreg_bench_{kind}_{run_id}"
        return cls(settings.model_copy(update={
            "database_url": SecretStr(postgres.dsn(postgres_port, database)),
            "topic_prefix": f"b{kind}{run_id}.", "s3_bucket": f"bench-{kind}-{run_id}"}), postgres_port, database)

    @property
    def env(self) -> dict[str, str]:
        """What a service process needs on top of the stack's environment to be part of it."""
        return {"DATABASE_URL": self.settings.dsn, "MODELREG_TOPIC_PREFIX": self.settings.topic_prefix,
                "S3_BUCKET": self.settings.s3_bucket}

    async def create_database(self) -> None:
        await _database(self.postgres_port, f'CREATE DATABASE "{self.database}"')

    async def prepare(self) -> None:
        """The schema, the topics and the services' ACLs on them (after `create_database`)."""
        await migrate(self.settings.dsn)
        await ensure_topics(self.settings)
        await apply_acls(self.settings, self.settings.topic_prefix)

    async def remove(self, log: Callable[[str], None]) -> None:
        """Topics (and ACLs), bucket, database; a leftover is logged, never raised."""
        cleanups: tuple[tuple[str, Coroutine[Any, Any, None]], ...] = (
            ("topics", _remove_topics(self.settings)), ("bucket", remove_bucket(self.settings)),
            ("database", _database(self.postgres_port, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')))
        for what, cleanup in cleanups:
            try:
                await cleanup
            except Exception as exc:  # noqa: BLE001 - a leftover is reported, never hides the result
                log(f"could not remove the {self.settings.topic_prefix} pipeline's {what}: "
                    f"{type(exc).__name__}: {exc}")


async def _database(port: int, statement: str) -> None:
    conn = await asyncpg.connect(postgres.dsn(port, "postgres"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def remove_bucket(settings: Settings) -> None:
    async with ObjectStore(settings) as store:
        while keys := [key for key, _ in await store.list_prefix(settings.s3_bucket, "", 1000)]:
            await (await store.boto()).delete_objects(Bucket=settings.s3_bucket,
                                              Delete={"Objects": [{"Key": key} for key in keys]})
        await (await store.boto()).delete_bucket(Bucket=settings.s3_bucket)


async def _remove_topics(settings: Settings) -> None:
    await remove_acls(settings, settings.topic_prefix)
    admin = make_admin(settings, "modelreg-bench")
    await admin.start()
    try:
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)])
    finally:
        await admin.close()
