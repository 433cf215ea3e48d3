"""The audit writer on real Kafka and PostgreSQL: registry.audit -> one hash-chained row each.

Other tests' services write audit records into the same log while these run, so every
assertion looks at this module's own models, or at the whole chain's integrity only.
Tampering is undone before each test ends, so the chain is intact for whoever verifies next.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.audit import store
from services.audit.chain import ALTERED, GENESIS, PREDECESSOR_MISSING, TRUNCATED, AuditRecord, link
from services.cli import audit as audit_cli
from shared.db import migrate
from shared.events import CloudEvent, RegistryAudit, RegistryAuditData, new_event
from shared.settings import Settings
from tests.conftest import Endpoints, _with_database
from tests.support import Kafka, eventually, signed, unique_name


@pytest.fixture(scope="module")
async def audit_app(request: pytest.FixtureRequest, settings: Settings,
                    kafka: Kafka):  # type: ignore[no-untyped-def]
    """The audit writer, started in-process: the session's shared instance when the
    integration conftest offers one (so no second instance joins its consumer group), else
    one of this module's own."""
    shared = _shared_starter(request)
    if shared is not None:
        yield (await shared(settings, "audit"))["audit"]
        return
    from services.audit.app import create_app

    app = create_app(settings)
    await app.start()
    yield app
    await app.stop()


def _shared_starter(request: pytest.FixtureRequest) -> Any:
    for plugin in request.config.pluginmanager.get_plugins():
        path = str(getattr(plugin, "__file__", "") or "")
        if path.endswith(("integration/conftest.py", "integration\\conftest.py")) \
                and callable(getattr(plugin, "running", None)):
            return plugin.running
    return None


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI pointed at this run's database, and its bucket and keyring (the checkpoints)."""
    monkeypatch.setenv("DATABASE_URL", settings.dsn)
    monkeypatch.setenv("S3_ENDPOINT_URL", settings.s3_endpoint_url or "")
    monkeypatch.setenv("S3_BUCKET", settings.s3_bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.aws_access_key_id.get_secret_value())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.aws_secret_access_key.get_secret_value())
    if settings.keyring_file:
        monkeypatch.setenv("MODELREG_KEYRING_FILE", str(settings.keyring_file))
    return settings


def audit_event(name: str, action: str = "promoted", version: int | None = 1,
                **data: Any) -> CloudEvent[Any]:
    fields: dict[str, Any] = {"from_stage": "staging", "to_stage": "production",
                              "actor": "modelreg/promotion", "reason": f"{action} by policy",
                              "evidence": {"auc": 0.93, "threshold": 0.9, "checks": ["latency"]}}
    fields.update(data)
    return new_event(RegistryAudit, RegistryAuditData(action=action, name=name, version=version, **fields),
                     source="tests/audit")


async def publish(kafka: Kafka, *events: CloudEvent[Any]) -> None:
    for event in events:
        await kafka.publish_raw("registry.audit", signed(kafka.settings, event), key=event.data.name)


async def rows_for(db: asyncpg.Pool, *names: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_log WHERE name = ANY($1::text[]) ORDER BY seq", list(names))


async def wait_for_rows(db: asyncpg.Pool, names: list[str], count: int) -> list[asyncpg.Record]:
    async def enough() -> list[asyncpg.Record] | None:
        found = await rows_for(db, *names)
        return found if len(found) >= count else None
    return await eventually(enough, timeout=60)


async def verify(db: asyncpg.Pool) -> store.Verification:
    async with db.acquire() as conn:
        return await store.verify(conn)


async def tamper(db: asyncpg.Pool, sql: str, *args: Any) -> str:
    """Run `sql` as someone with superuser access to the database would: the append-only
    trigger switched off for the statement (the roles and trigger stop everyone else)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        return await conn.execute(sql, *args)


@contextlib.asynccontextmanager
async def writers_paused(db: asyncpg.Pool) -> AsyncIterator[None]:
    """Hold the chain head lock: no audit writer appends until the block ends."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM audit_chain_head WHERE id FOR UPDATE")
        yield


async def seeded(kafka: Kafka, db: asyncpg.Pool, count: int = 3) -> tuple[str, list[asyncpg.Record]]:
    name = unique_name("audited")
    events = [audit_event(name, version=v) for v in range(1, count + 1)]
    await publish(kafka, *events)
    return name, await wait_for_rows(db, [name], count)


async def cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = await audit_cli.run(audit_cli.parse_args(args), out=out)
    return code, out.getvalue()


# ---------------------------------------------------------------------------- the writer


async def test_each_record_is_stored_once_and_chained(kafka: Kafka, db: asyncpg.Pool, audit_app) -> None:
    names = [unique_name("audited"), unique_name("audited"), unique_name("audited")]
    first = audit_event(names[0], "ingested", from_stage=None, to_stage="none", reason="registered",
                        evidence={"sha256": "ab" * 32, "size_bytes": 10})
    events = [first,
              audit_event(names[0], "validated", from_stage="none", to_stage="none",
                          evidence={"big": 1e16, "ratio": 2.0, "tiny": 1.5e-7,
                                    "nested": {"b": 1, "a": [True, None]}}),
              audit_event(names[0], "promoted"),
              audit_event(names[1], "rejected", version=None, from_stage=None, to_stage=None,
                          reason="version_conflict: version 7\nis taken"),
              audit_event(names[2], "archived", from_stage="production", to_stage="archived")]
    await publish(kafka, *events)
    await publish(kafka, first)  # a redelivery: the same event id again
    sentinel = audit_event(names[0], "sentinel")  # same key, so it comes after the duplicate
    await publish(kafka, sentinel)
    events.append(sentinel)

    rows = await wait_for_rows(db, names, len(events))
    await asyncio.sleep(0.5)
    rows = await rows_for(db, *names)
    assert sorted(r["event_id"] for r in rows) == sorted(e.id for e in events)
    by_id = {r["event_id"]: r for r in rows}
    for event in events:
        row, data = by_id[event.id], event.data
        assert (row["action"], row["name"], row["version"], row["from_stage"], row["to_stage"],
                row["actor"], row["reason"], row["evidence"]) == (
            data.action, data.name, data.version, data.from_stage, data.to_stage, data.actor,
            data.reason, data.evidence)
        assert (row["correlation_id"], row["causation_id"], row["source"], row["occurred_at"]) == (
            event.correlationid, event.causationid, event.source, event.time)
        # The stored hash is the link from the stored predecessor hash over the stored content.
        assert row["hash"] == link(row["prev_hash"], {**dict(row), "evidence": row["evidence"]})
    # One model's records keep their order in the chain (one key, one partition).
    own = [r["event_id"] for r in rows if r["name"] == names[0]]
    assert own == [e.id for e in events if e.data.name == names[0]]

    result = await verify(db)
    assert result.intact, [str(p) for p in result.problems]
    assert result.count >= len(events)
    first_row = await db.fetchrow("SELECT prev_hash FROM audit_log ORDER BY seq LIMIT 1")
    assert first_row["prev_hash"] == GENESIS


@pytest.fixture
async def scratch_db(endpoints: Endpoints, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: rows appended straight to its log are explained by no event on
    the run's topic, which `modelreg replay` on the run's database would rightly report."""
    database = f"modelreg_scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_with_database(endpoints.database_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = _with_database(settings.dsn, database)
    try:
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def test_concurrent_writers_extend_one_linear_chain(scratch_db: asyncpg.Pool) -> None:
    db = scratch_db
    name = unique_name("concurrent")

    async def writer(w: int) -> None:
        from datetime import UTC, datetime
        for b in range(8):
            records = [AuditRecord(event_id=uuid.uuid4(), action="promoted", name=name, version=w * 100 + b,
                                   actor=f"writer-{w}", source="tests/audit", occurred_at=datetime.now(UTC),
                                   evidence={"batch": b, "i": i}) for i in range(5)]
            async with db.acquire() as conn, conn.transaction():
                await store.append(conn, records)

    await asyncio.gather(*(writer(w) for w in range(4)))
    rows = await rows_for(db, name)
    assert len(rows) == 4 * 8 * 5
    result = await verify(db)
    assert result.intact, [str(p) for p in result.problems]
    links = await db.fetchval(
        """SELECT count(*) FROM audit_log a JOIN audit_log b ON b.prev_hash = a.hash""")
    assert links == await db.fetchval("SELECT count(*) - 1 FROM audit_log")  # no forks

    again = [AuditRecord(event_id=rows[0]["event_id"], action="x", name=name, actor="a",
                         source="s", occurred_at=rows[0]["occurred_at"])]
    async with db.acquire() as conn, conn.transaction():
        assert await store.append(conn, again) == []  # already in the log: left out, no error


# ---------------------------------------------------------------------------- tampering


async def test_an_altered_row_is_named_by_verify(kafka: Kafka, db: asyncpg.Pool, audit_app,
                                                 cli_env: Settings) -> None:
    name, rows = await seeded(kafka, db)
    target = rows[1]
    await tamper(db, "UPDATE audit_log SET reason = 'tampered' WHERE seq = $1", target["seq"])
    try:
        result = await verify(db)
        assert [(p.seq, p.event_id, p.kind) for p in result.problems] == [
            (target["seq"], target["event_id"], ALTERED)]

        code, out = await cli(["verify"])
        assert code == 1
        assert f"seq {target['seq']} (event {target['event_id']}): altered" in out
        code, out = await cli(["verify", "--json"])
        report = json.loads(out)
        assert code == 1 and report["intact"] is False
        assert report["problems"][0]["seq"] == target["seq"]
        assert report["problems"][0]["event_id"] == str(target["event_id"])
    finally:
        await tamper(db, "UPDATE audit_log SET reason = $2 WHERE seq = $1", target["seq"], target["reason"])
    assert (await verify(db)).intact


async def test_a_deleted_middle_row_is_detected(kafka: Kafka, db: asyncpg.Pool, audit_app,
                                                cli_env: Settings) -> None:
    name, rows = await seeded(kafka, db)
    victim = rows[0]
    successor = await db.fetchrow("SELECT seq, event_id FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1",
                                  victim["seq"])
    await tamper(db, "DELETE FROM audit_log WHERE seq = $1", victim["seq"])
    try:
        result = await verify(db)
        assert [(p.seq, p.event_id, p.kind) for p in result.problems] == [
            (successor["seq"], successor["event_id"], PREDECESSOR_MISSING)]
        code, out = await cli(["verify"])
        assert code == 1
        assert f"seq {successor['seq']} (event {successor['event_id']})" in out
        assert "predecessor missing (row deleted?)" in out
    finally:
        await restore(db, victim)
    assert (await verify(db)).intact


async def test_rows_deleted_at_the_end_are_detected(kafka: Kafka, db: asyncpg.Pool, audit_app,
                                                    cli_env: Settings) -> None:
    await seeded(kafka, db)
    async with writers_paused(db):
        last_two = await db.fetch("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 2")
        await tamper(db, "DELETE FROM audit_log WHERE seq = ANY($1::bigint[])",
                         [r["seq"] for r in last_two])
        try:
            result = await verify(db)
            new_last = await db.fetchrow("SELECT seq, event_id FROM audit_log ORDER BY seq DESC LIMIT 1")
            assert [(p.seq, p.event_id, p.kind) for p in result.problems] == [
                (new_last["seq"], new_last["event_id"], TRUNCATED)]
            code, out = await cli(["verify"])
            assert code == 1 and "rows deleted at the end" in out and f"seq {new_last['seq']}" in out
        finally:
            for row in last_two:
                await restore(db, row)
    assert (await verify(db)).intact


async def restore(db: asyncpg.Pool, row: asyncpg.Record) -> None:
    columns = list(row.keys())
    await db.execute(f"INSERT INTO audit_log ({', '.join(columns)}) VALUES "
                     f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))})", *row.values())


# ---------------------------------------------------------------------------- the CLI


async def test_cli_verify_reports_an_intact_chain(db: asyncpg.Pool, audit_app, cli_env: Settings) -> None:
    code, out = await cli(["verify"])
    head = await db.fetchrow("SELECT last_hash, row_count FROM audit_chain_head")
    assert code == 0, out
    assert out.startswith("audit chain intact: ")
    assert f"head {head['last_hash'][:16]}" in out
    # The command itself, as `modelreg audit verify` runs it (its own event loop).
    assert await asyncio.to_thread(audit_cli.command, audit_cli.parse_args(["verify"])) == 0


async def test_cli_tail_prints_the_newest_records(kafka: Kafka, db: asyncpg.Pool, audit_app,
                                                  cli_env: Settings) -> None:
    name, rows = await seeded(kafka, db, count=4)
    code, out = await cli(["tail", "--model", name, "--limit", "2"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert [int(line.split()[0]) for line in lines[1:]] == [r["seq"] for r in rows[2:]]
    assert all(name in line and "staging->production" in line and "modelreg/promotion" in line
               for line in lines[1:])

    code, out = await cli(["tail", "--model", name, "--json"])
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in records] == [r["seq"] for r in rows]
    assert records[0]["event_id"] == str(rows[0]["event_id"]) and records[0]["evidence"]["auc"] == 0.93

    code, out = await cli(["tail", "--model", unique_name("nobody")])
    assert code == 0 and "no audit records" in out

    everything = (await cli(["tail"]))[1].splitlines()
    assert 2 <= len(everything) <= 21


async def test_cli_tail_follow_prints_new_records(kafka: Kafka, db: asyncpg.Pool, audit_app,
                                                  cli_env: Settings) -> None:
    name, rows = await seeded(kafka, db, count=1)
    out = io.StringIO()
    args = audit_cli.parse_args(["tail", "--model", name, "--follow"])
    task = asyncio.create_task(audit_cli.run(args, out=out))
    try:
        await eventually(lambda: str(rows[0]["seq"]) in out.getvalue())
        later = audit_event(name, "demoted", from_stage="production", to_stage="staging", reason="rollback")
        await publish(kafka, later)
        row = (await wait_for_rows(db, [name], 2))[-1]
        await eventually(lambda: "production->staging" in out.getvalue(), timeout=10)
        last = out.getvalue().splitlines()[-1]
        assert last.split()[0] == str(row["seq"]) and "demoted" in last and "rollback" in last
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cli_unreachable_database_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.main import UserError

    monkeypatch.setenv("DATABASE_URL", "postgresql://modelreg:secret@127.0.0.1:1/modelreg")
    with pytest.raises(UserError) as raised:
        await asyncio.to_thread(audit_cli.command, audit_cli.parse_args(["verify"]))
    message = str(raised.value)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/modelreg" in message
    assert "secret" not in message and "\n" not in message


def test_cli_arguments() -> None:
    args = audit_cli.parse_args(["tail"])
    assert (args.command, args.audit_command, args.model, args.limit, args.follow, args.json) == (
        "audit", "tail", None, 20, False, False)
    args = audit_cli.parse_args(["tail", "--model", "m", "--limit", "5", "--follow", "--json"])
    assert (args.model, args.limit, args.follow, args.json) == ("m", 5, True, True)
    assert audit_cli.parse_args(["verify", "--json"]).json is True
    with pytest.raises(SystemExit):
        audit_cli.parse_args(["tail", "--limit", "0"])
