"""An audit trail that does not trust the database, on real PostgreSQL, S3 and Kafka.

Someone with superuser access to PostgreSQL can rewrite `audit_log`, re-hash every later row
and move the chain head: the table then agrees with itself. These tests do exactly that (as a
superuser, the append-only trigger switched off) and check that `modelreg audit verify` still
names what happened, from the audit writer's signed checkpoints in S3. Every edit is undone
(the chain re-linked from the original rows) before the test ends, and checkpointing is held
off meanwhile, so no checkpoint ever signs a forged head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import pytest

from services.audit import store
from services.audit.app import checkpoint_key
from services.audit.chain import GENESIS, TRUNCATED, link
from services.audit.checkpoint import REWRITTEN, Checkpoint, authenticity_problem
from services.audit.checkpointer import CHECKPOINT_LOCK, Checkpointer, CheckpointObjects
from services.cli import audit as audit_cli
from shared.db import create_pool
from shared.keys import Keyring, write_keyring
from shared.settings import Settings
from shared.storage import ObjectStore, S3Location
from tests.integration.test_audit import audit_app, cli_env, seeded, tamper  # noqa: F401 - fixtures and helpers
from tests.support import Kafka, eventually


@pytest.fixture(scope="module")
def keyed(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The run's settings with signing keys and keyring: the session's, else fresh ones."""
    if settings.signing_key_file and settings.keyring_file:
        return settings
    directory = tmp_path_factory.mktemp("audit-keys")
    keyring = write_keyring(directory)
    return settings.model_copy(update={"signing_key_file": directory, "keyring_file": keyring})


@pytest.fixture
def verify_env(keyed: Settings, cli_env: Settings,  # noqa: F811 - the fixture imported above
               monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELREG_KEYRING_FILE", str(keyed.keyring_file))
    return keyed


@pytest.fixture
async def objects(settings: Settings) -> AsyncIterator[CheckpointObjects]:
    async with ObjectStore(settings) as store_:
        await store_.ensure_bucket()
        yield CheckpointObjects(store_)


@pytest.fixture
async def checkpointer(keyed: Settings, objects: CheckpointObjects,
                       audit_app) -> AsyncIterator[Checkpointer]:  # noqa: F811
    """A checkpointer with the audit writer's key, acting as the audit role; it signs only when
    told to (its N and T are out of reach)."""
    key = checkpoint_key(keyed.signing_key_file)
    assert key is not None
    pool = await create_pool(keyed.dsn, role="modelreg_audit")
    try:
        yield Checkpointer(pool, objects, key, every_records=10**7, every_seconds=86_400)
    finally:
        await pool.close()


async def checkpoint_covering(checkpointer: Checkpointer, seq: int) -> Checkpoint:
    async def attempt() -> Checkpoint | None:
        made = await checkpointer.tick(force=True) or checkpointer.last
        return made if made is not None and made.seq >= seq else None
    return await eventually(attempt, timeout=30)


async def announced(db: asyncpg.Pool, checkpoint: Checkpoint) -> None:
    """Wait until the audit writer has appended `checkpoint`'s announcement to the log."""
    await eventually(lambda: db.fetchval(
        "SELECT count(*) = 1 FROM audit_log WHERE action = 'checkpoint' AND (evidence->>'seq')::bigint = $1",
        checkpoint.seq))


async def cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = await audit_cli.run(audit_cli.parse_args(args), out=out)
    return code, out.getvalue()


async def chain_alone(db: asyncpg.Pool) -> store.Verification:
    """The verification a table-only check gives (no checkpoints)."""
    async with db.acquire() as conn:
        return await store.verify(conn)


@contextlib.asynccontextmanager
async def checkpoints_held(db: asyncpg.Pool) -> AsyncIterator[None]:
    """No checkpointer signs while the log is tampered with (they take this lock first)."""
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", CHECKPOINT_LOCK)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", CHECKPOINT_LOCK)


async def relink(db: asyncpg.Pool, from_seq: int, *, edits: dict[int, dict[str, Any]] | None = None,
                 delete: Iterable[int] = (), insert: Iterable[asyncpg.Record] = ()) -> None:
    """As a database superuser could: delete, re-insert or edit rows, then re-hash the chain
    from `from_seq` on and move the head to match, so every hash in the table agrees."""
    edits = edits or {}
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # the trigger off
        await store.lock_head(conn)
        for seq in delete:
            await conn.execute("DELETE FROM audit_log WHERE seq = $1", seq)
        for row in insert:
            columns = list(row.keys())
            await conn.execute(f"INSERT INTO audit_log ({', '.join(columns)}) VALUES "
                               f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))})", *row.values())
        prev = await conn.fetchval("SELECT hash FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
                                   from_seq) or GENESIS
        for row in [r async for r in store.rows(conn, after=from_seq - 1)]:
            changed = edits.get(row.seq, {})
            record = dataclasses.replace(row.record, **changed)
            digest = link(prev, record)
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changed, start=4))
            await conn.execute(f"UPDATE audit_log SET prev_hash = $2, hash = $3"
                               f"{', ' + assignments if assignments else ''} WHERE seq = $1",
                               row.seq, prev, digest, *changed.values())
            prev = digest
        await conn.execute(
            """UPDATE audit_chain_head SET last_seq = (SELECT coalesce(max(seq), 0) FROM audit_log),
                   last_hash = $1, row_count = (SELECT count(*) FROM audit_log) WHERE id""", prev)


async def rows_from(db: asyncpg.Pool, seq: int) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_log WHERE seq >= $1 ORDER BY seq", seq)


# ---------------------------------------------------------------------------- checkpoints


async def test_checkpoints_are_signed_kept_write_once_and_announced(
        kafka: Kafka, db: asyncpg.Pool, settings: Settings, checkpointer: Checkpointer,
        objects: CheckpointObjects, verify_env: Settings) -> None:
    _, rows = await seeded(kafka, db)
    checkpoint = await checkpoint_covering(checkpointer, rows[-1]["seq"])

    stored = await objects.read(checkpoint.key)
    keyring = Keyring.load(verify_env.keyring_file)
    assert stored.seq == checkpoint.seq and authenticity_problem(stored, keyring) is None
    head_row = await db.fetchrow("SELECT hash FROM audit_log WHERE seq = $1", stored.seq)
    assert head_row["hash"] == stored.hash
    # write-once: the same key is never overwritten (the server honours If-None-Match)
    assert await objects.put(stored) is False
    body = b'{"forged": true}'
    assert await objects.objects.put_if_absent(S3Location(objects.bucket, stored.key), body, "0" * 64) is False
    assert (await objects.read(checkpoint.key)) == stored

    # announced on registry.audit, and kept in the chain itself by the audit writer
    seen = await kafka.wait_for("registry.audit", lambda s: s.data["action"] == "checkpoint"
                                     and s.data["evidence"]["seq"] == checkpoint.seq)
    evidence = seen[0].data["evidence"]
    assert (evidence["hash"], evidence["signature"], evidence["kid"]) == (
        checkpoint.hash, checkpoint.signature, checkpoint.kid)
    assert seen[0].event["source"] == "modelreg/audit"
    await announced(db, checkpoint)

    code, out = await cli(["verify"])
    assert code == 0, out
    assert "signed checkpoint(s) agree" in out
    code, out = await cli(["verify", "--json"])
    report = json.loads(out)
    assert report["intact"] and report["checkpoints"]["newest_seq"] >= checkpoint.seq


async def test_the_writer_refuses_to_sign_a_log_changed_behind_its_back(
        kafka: Kafka, db: asyncpg.Pool, checkpointer: Checkpointer) -> None:
    from prometheus_client import REGISTRY

    def refusals() -> float:
        return REGISTRY.get_sample_value("modelreg_audit_checkpoint_refusals_total") or 0.0

    _, first = await seeded(kafka, db, count=1)
    await checkpoint_covering(checkpointer, first[0]["seq"])
    _, later = await seeded(kafka, db, count=1)
    before = refusals()
    await tamper(db, "UPDATE audit_log SET reason = 'edited by hand' WHERE seq = $1", later[0]["seq"])
    try:
        async def refused() -> str | None:  # (a tick finding another writer at it does nothing)
            assert await checkpointer.tick(force=True) is None
            return checkpointer.refused
        assert await eventually(refused) == f"seq {later[0]['seq']}: the stored hash does not match the row's content"
        assert refusals() > before
    finally:
        await tamper(db, "UPDATE audit_log SET reason = $2 WHERE seq = $1", later[0]["seq"], later[0]["reason"])
    assert (await checkpoint_covering(checkpointer, later[0]["seq"])).seq >= later[0]["seq"]
    assert checkpointer.refused is None


async def test_a_recomputed_chain_is_named_though_every_hash_in_the_table_agrees(
        kafka: Kafka, db: asyncpg.Pool, checkpointer: Checkpointer, verify_env: Settings) -> None:
    _, rows = await seeded(kafka, db)
    target = rows[1]
    checkpoint = await checkpoint_covering(checkpointer, rows[-1]["seq"])
    async with checkpoints_held(db):
        original = await rows_from(db, target["seq"])
        await relink(db, target["seq"], edits={target["seq"]: {"to_stage": "archived"}})
        try:
            alone = await chain_alone(db)
            assert alone.intact, [str(p) for p in alone.problems]  # the table agrees with itself
            code, out = await cli(["verify"])
            assert code == 1, out
            assert "rewritten (differs from a signed checkpoint)" in out
            report = json.loads((await cli(["verify", "--json"]))[1])
            rewritten = [p for p in report["problems"] if p["kind"] == REWRITTEN]
            assert len(rewritten) == 1 and target["seq"] <= rewritten[0]["seq"] <= checkpoint.seq
        finally:
            await relink(db, target["seq"], edits={r["seq"]: {"to_stage": r["to_stage"]} for r in original})
    assert (await cli(["verify"]))[0] == 0


async def test_a_deleted_row_is_named_though_the_chain_was_relinked(
        kafka: Kafka, db: asyncpg.Pool, checkpointer: Checkpointer, verify_env: Settings) -> None:
    _, rows = await seeded(kafka, db)
    victim = rows[0]
    await checkpoint_covering(checkpointer, rows[-1]["seq"])
    async with checkpoints_held(db):
        await relink(db, victim["seq"], delete=[victim["seq"]])
        try:
            assert (await chain_alone(db)).intact
            code, out = await cli(["verify"])
            assert code == 1, out
            assert "rewritten (differs from a signed checkpoint)" in out or "rows deleted before" in out
        finally:
            await relink(db, victim["seq"], insert=[victim])
    assert (await cli(["verify"]))[0] == 0


async def test_a_truncated_tail_is_named_though_the_head_was_moved_back(
        kafka: Kafka, db: asyncpg.Pool, checkpointer: Checkpointer, verify_env: Settings) -> None:
    _, rows = await seeded(kafka, db)
    checkpoint = await checkpoint_covering(checkpointer, rows[-1]["seq"])
    await announced(db, checkpoint)  # nothing more on its way to the log
    cut_from = rows[-1]["seq"]
    async with checkpoints_held(db):
        removed = await rows_from(db, cut_from)
        await relink(db, cut_from, delete=[r["seq"] for r in removed])
        try:
            alone = await chain_alone(db)
            assert alone.intact and alone.head.last_seq < cut_from
            code, out = await cli(["verify"])
            assert code == 1, out
            assert TRUNCATED in out and f"covers seq {checkpoint.seq}" in out
            assert "chain head behind a signed checkpoint" in out
        finally:
            await relink(db, cut_from, insert=removed)
    assert (await cli(["verify"]))[0] == 0


async def test_a_checkpoint_not_signed_by_the_audit_writer_fails_verify(
        kafka: Kafka, db: asyncpg.Pool, settings: Settings, objects: CheckpointObjects,
        verify_env: Settings) -> None:
    from shared.keys import ensure_service_keys

    head = await db.fetchrow("SELECT last_seq, last_hash, row_count FROM audit_chain_head")
    promotion = ensure_service_keys(verify_env.keyring_file.parent, ["promotion"])["promotion"]
    from datetime import UTC, datetime

    from services.audit.checkpoint import signed_payload
    now = datetime.now(UTC)
    # a seq far beyond the log, so it never collides with a real checkpoint of this run
    seq = 10**15 + head["last_seq"]
    forged = Checkpoint(seq, head["last_hash"], head["row_count"], now, promotion.key_id,
                        promotion.sign(signed_payload(seq, head["last_hash"], head["row_count"], now)))
    assert await objects.put(forged)
    try:
        code, out = await cli(["verify"])
        assert code == 1
        assert "checkpoint not authentic" in out and "only the audit writer's may sign checkpoints" in out
    finally:
        await objects.objects.delete(S3Location(objects.bucket, forged.key))  # no object lock here
    assert (await cli(["verify"]))[0] == 0


# ---------------------------------------------------------------------------- roles


async def test_the_audit_role_may_only_append_and_the_trigger_stops_even_the_owner(
        kafka: Kafka, settings: Settings, db: asyncpg.Pool, audit_app) -> None:  # noqa: F811
    assert await audit_app.resources.pool.fetchval("SELECT current_user") == "modelreg_audit"
    _, rows = await seeded(kafka, db, count=1)
    pool = await create_pool(settings.dsn, role="modelreg_audit")
    try:
        async with pool.acquire() as conn:
            for statement in ("UPDATE audit_log SET reason = 'x'", "DELETE FROM audit_log",
                              "TRUNCATE audit_log", "INSERT INTO model_versions (name) VALUES ('x')",
                              "UPDATE promotion_versions SET stage = 'production'"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            assert await conn.fetchval("SELECT count(*) >= 0 FROM audit_log")
    finally:
        await pool.close()
    # the login (super)user is refused too, by the trigger
    seq = rows[0]["seq"]
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE audit_log SET reason = 'x' WHERE seq = $1", seq)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log WHERE seq = $1", seq)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("TRUNCATE audit_log")


@pytest.mark.parametrize(("role", "allowed", "refused"), [
    ("modelreg_ingest", "SELECT count(*) FROM model_versions",
     "INSERT INTO validation_results (name, version, passed, checks) VALUES ('x', 1, true, '[]')"),
    ("modelreg_promotion", "SELECT count(*) FROM promotion_versions", "SELECT count(*) FROM api_tokens"),
    ("modelreg_archival", "SELECT count(*) FROM archival_versions", "DELETE FROM view_models"),
    ("modelreg_api", "SELECT count(*) FROM view_models", "UPDATE view_models SET champion = 1"),
    ("modelreg_validation", "SELECT count(*) FROM validation_results",
     "INSERT INTO api_tokens (name, role, token_sha256) VALUES ('x', 'admin', repeat('a', 64))"),
])
async def test_each_service_role_writes_only_its_own_tables(settings: Settings, db: asyncpg.Pool,
                                                            role: str, allowed: str, refused: str) -> None:
    pool = await create_pool(settings.dsn, role=role, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == role
            await conn.fetchval(allowed)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(refused)
            await conn.execute("RESET ALL")  # what the pool does on release: the role stays
            assert await conn.fetchval("SELECT current_user") == role
    finally:
        await pool.close()


# ---------------------------------------------------------------------------- replay


async def test_replay_holds_audit_log_itself_to_the_topic(
        kafka: Kafka, db: asyncpg.Pool, settings: Settings, keyed: Settings, audit_app) -> None:  # noqa: F811
    from services.audit.replay import committed_offsets, replay

    name, rows = await seeded(kafka, db)
    edited, deleted = rows[1], rows[2]
    on_topic = kafka.matching("registry.audit", lambda s: s.event["id"] == str(deleted["event_id"]))[0]

    async def consumed_past_deleted() -> bool:  # the writer has committed past that event
        return (await committed_offsets(settings)).get(on_topic.partition, 0) > on_topic.offset
    await eventually(consumed_past_deleted)

    def mine(report) -> list[str]:  # type: ignore[no-untyped-def]
        ids = {str(r["event_id"]) for r in rows} | {str(invented)}
        return sorted(str(d) for d in report.differences if d.table == "audit_log" and str(d.key[0]) in ids)

    invented = uuid.uuid4()
    assert mine(await replay(keyed)) == []
    async with checkpoints_held(db):
        await tamper(db, "UPDATE audit_log SET reason = 'edited by hand' WHERE seq = $1", edited["seq"])
        await tamper(db, "DELETE FROM audit_log WHERE seq = $1", deleted["seq"])
        await tamper(db, "INSERT INTO audit_log SELECT $2, $3, action, name, version, from_stage, to_stage, actor, "
                         "reason, evidence, correlation_id, causation_id, source, occurred_at, recorded_at, "
                         "prev_hash, $4 FROM audit_log WHERE seq = $1",
                     rows[0]["seq"], deleted["seq"], invented, hashlib.sha256(invented.bytes).hexdigest())
        try:
            report = await replay(keyed)
        finally:
            await tamper(db, "DELETE FROM audit_log WHERE seq = $1", deleted["seq"])
            await relink(db, deleted["seq"], insert=[deleted])
            await tamper(db, "UPDATE audit_log SET reason = $2 WHERE seq = $1", edited["seq"], edited["reason"])
    assert mine(report) == sorted([
        f"audit_log ({edited['event_id']}): reason: live 'edited by hand' != replay {edited['reason']!r}",
        f"audit_log ({deleted['event_id']}): missing in live",
        f"audit_log ({invented}): missing in replay",
    ])
    assert (await chain_alone(db)).intact


async def test_verify_without_the_keyring_or_s3_is_one_clear_error(
        kafka: Kafka, db: asyncpg.Pool, checkpointer: Checkpointer, verify_env: Settings,
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.cli.errors import UserError

    _, rows = await seeded(kafka, db, count=1)
    await checkpoint_covering(checkpointer, rows[-1]["seq"])
    monkeypatch.setenv("MODELREG_KEYRING_FILE", str(tmp_path / "absent.json"))
    with pytest.raises(UserError, match="the keyring to check them is not available.*absent.json"):
        await cli(["verify"])
    monkeypatch.setenv("MODELREG_KEYRING_FILE", str(verify_env.keyring_file))
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(UserError, match="cannot read the audit checkpoints in s3://") as raised:
        await cli(["verify"])
    assert verify_env.aws_secret_access_key.get_secret_value() not in str(raised.value)


async def test_a_service_with_its_own_login_user_starts_and_acts_as_its_role(
        settings: Settings, db: asyncpg.Pool) -> None:
    """Production: each service logs in as its own user, a member of its role only; the
    migrations were applied by the owner, so the start-up migrate finds nothing to do."""
    from urllib.parse import urlsplit, urlunsplit

    from shared.db import migrate, service_role

    login = f"zz_ingest_{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: unique, dropped below
    await db.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'test-only' NOSUPERUSER NOCREATEROLE NOCREATEDB")
    try:
        await db.execute(f"GRANT modelreg_ingest TO {login}")
        parts = urlsplit(settings.dsn)
        dsn = urlunsplit((parts.scheme, f"{login}:test-only@{parts.hostname}:{parts.port}", parts.path, "", ""))
        assert await migrate(dsn) == []
        pool = await create_pool(dsn, role=service_role(None, "ingest"), max_size=1)
        try:
            async with pool.acquire() as conn:
                assert (await conn.fetchval("SELECT session_user"), await conn.fetchval("SELECT current_user")) == (
                    login, "modelreg_ingest")
                await conn.fetchval("SELECT count(*) FROM model_versions")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("SET ROLE modelreg_audit")  # not a member: no way round
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("DELETE FROM audit_log")
        finally:
            await pool.close()
    finally:
        await db.execute(f"DROP ROLE {login}")
