"""The batch processor on real PostgreSQL: idempotency, refusals that undo only their own
event, and dead letters written once, however often a batch is delivered."""

from __future__ import annotations

import json
import uuid

import asyncpg

from shared.consumer import (
    MAX_IO_ROUNDS,
    UNEXPECTED_FAULT_ATTEMPTS,
    Batch,
    BatchProcessor,
    NeedsIO,
    Record,
    ServiceHandlers,
    Tx,
    begin_claiming,
    unit_of_work,
)
from shared.events import InvalidEvent, ModelRegistered
from tests.support import cloudevent, signing_service


def record(offset: int, event: dict | bytes, topic: str = "model.registered") -> Record:
    value = event if isinstance(event, bytes) else json.dumps(event).encode()
    return Record(topic, 0, offset, b"k", value)


async def test_a_refusal_undoes_only_its_own_writes_and_redelivery_changes_nothing(db: asyncpg.Pool) -> None:
    service = signing_service("probe")
    await db.execute(f'CREATE TABLE "{service}" (name text PRIMARY KEY)')

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        await tx.conn.execute(f'INSERT INTO "{service}" VALUES ($1)', event.data.name)
        if event.data.name.startswith("refuse"):
            raise InvalidEvent("unknown_version", "refused after writing")
        tx.audit("probed", name=event.data.name)

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    events = [cloudevent("model.registered", {"name": name, "artifact": artifact})
              for name in ("keep-a", "refuse-b", "keep-c")]
    batch = [record(i, e) for i, e in enumerate(events)] + [record(3, b"not json")]
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}))
    for _ in range(3):  # delivered three times: applied once
        await processor.process(batch)

    assert {r["name"] for r in await db.fetch(f'SELECT name FROM "{service}"')} == {"keep-a", "keep-c"}
    rows = await db.fetch("SELECT topic, value FROM outbox WHERE service = $1 ORDER BY id", service)
    topics = [r["topic"] for r in rows]
    assert topics.count("registry.dlq") == 2  # the refusal and the non-JSON message, once each
    audits = [json.loads(r["value"])["data"] for r in rows if r["topic"] == "registry.audit"]
    assert sorted(a["action"] for a in audits) == ["dead_lettered", "dead_lettered", "probed", "probed"]
    assert await db.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", service) == 4
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_io_a_handler_needs_runs_outside_the_transaction_and_the_batch_is_decided_again(
        db: asyncpg.Pool) -> None:
    """A handler that needs I/O mid-decision gets it run with no transaction open (the
    database sees none from this service while it runs), and the batch is redone with what
    was fetched: its first, rolled-back attempt leaves nothing, its decisions count once."""
    service = signing_service("probe")
    await db.execute(f'CREATE TABLE "{service}" (name text PRIMARY KEY, verdict text)')
    open_during_fetch: list[int] = []
    counted: list[str] = []
    fetches = 0

    handler_pids: set[int] = set()

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        handler_pids.add(tx.conn.get_server_pid())
        await tx.conn.execute(f'INSERT INTO "{service}" (name) VALUES ($1)', event.data.name)
        verdict = tx.batch.facts.get(event.data.name)
        if verdict is None:
            async def fetch(batch: Batch) -> None:
                nonlocal fetches
                fetches += 1
                open_during_fetch.append(await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL", sorted(handler_pids)))
                batch.facts.update({name: f"checked {name}" for name in ("a", "b")})
            raise NeedsIO(fetch, "a verdict")
        await tx.conn.execute(f'UPDATE "{service}" SET verdict = $2 WHERE name = $1', event.data.name, verdict)
        tx.batch.committed.append(lambda: counted.append(event.data.name))

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    batch = [record(i, cloudevent("model.registered", {"name": name, "artifact": artifact}))
             for i, name in enumerate(("a", "b"))]
    await BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle})).process(batch)

    assert fetches == 1  # one round for the batch, not one per event
    assert open_during_fetch == [0]
    assert {(r["name"], r["verdict"]) for r in await db.fetch(f'SELECT * FROM "{service}"')} == {
        ("a", "checked a"), ("b", "checked b")}
    assert counted == ["a", "b"]


async def test_a_handler_that_keeps_needing_io_is_dead_lettered_not_looped_forever(db: asyncpg.Pool) -> None:
    service = signing_service("probe")
    rounds = 0

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        async def fetch(batch: Batch) -> None:
            nonlocal rounds
            rounds += 1
        raise NeedsIO(fetch, "never satisfied")

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}), max_backoff=0.01)
    await processor.process([record(0, cloudevent("model.registered", {"name": "a", "artifact": artifact}))])

    assert 0 < rounds <= MAX_IO_ROUNDS * (UNEXPECTED_FAULT_ATTEMPTS + 1) * 2
    letters = await db.fetch("SELECT value FROM outbox WHERE service = $1 AND topic = 'registry.dlq'", service)
    assert [json.loads(r["value"])["data"]["error"]["kind"] for r in letters] == ["handler_error"]
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_a_handler_that_swallowed_a_database_error_does_not_count_its_batch_as_applied(
        db: asyncpg.Pool) -> None:
    """PostgreSQL answers COMMIT with ROLLBACK, and no error, in a failed transaction: taken
    at its word, the batch would count as applied (its offsets committed) with nothing of it
    stored, its event lost without a dead letter."""
    service = signing_service("probe")

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        try:
            await tx.conn.execute("SELECT 1 / 0")
        except asyncpg.DivisionByZeroError:
            pass  # a handler's bug: the transaction has failed, and nothing after says so

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}), max_backoff=0.01)
    await processor.process([record(0, cloudevent("model.registered", {"name": "a", "artifact": artifact}))])

    rows = await db.fetch("SELECT topic, value FROM outbox WHERE service = $1 ORDER BY id", service)
    letters = [json.loads(r["value"])["data"] for r in rows if r["topic"] == "registry.dlq"]
    assert [letter["error"]["kind"] for letter in letters] == ["handler_error"]
    assert "ended with ROLLBACK" in letters[0]["error"]["message"], letters[0]["error"]
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_no_io_is_prepared_for_an_event_applied_before_and_a_batch_going_on_is_not_looked_up(
        db: asyncpg.Pool) -> None:
    """`prepare` (a service's I/O outside the transaction) gets only events not applied yet:
    within one process, a batch that goes on from where the last one left off is not looked
    up in processed_events; one that goes back (a redelivery), or any batch of a process that
    has applied nothing of its partitions yet (a restart), is."""
    service = signing_service("probe")
    prepared: list[set[str]] = []

    async def prepare(batch: Batch, events: list, parents: object) -> None:
        prepared.append({e.data.name for e in events})

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        tx.audit("probed", name=event.data.name)

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    events = [cloudevent("model.registered", {"name": f"e{i}", "artifact": artifact}) for i in range(6)]
    lookups = 0

    def processor() -> BatchProcessor:
        made = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}, prepare=prepare))
        look_up = made._unprocessed  # noqa: SLF001 - counting the lookups is what this test is about

        async def counted(deliveries: list) -> list:
            nonlocal lookups
            lookups += 1
            return await look_up(deliveries)

        made._unprocessed = counted  # type: ignore[method-assign]  # noqa: SLF001
        return made

    first = processor()
    await first.process([record(0, events[0]), record(1, events[1]), record(2, events[1])])  # a duplicate
    assert (prepared.pop(), lookups) == ({"e0", "e1"}, 1)  # nothing applied yet: looked up
    await first.process([record(4, events[2]), record(5, events[3])])  # a gap, as a transaction marker leaves
    assert (prepared.pop(), lookups) == ({"e2", "e3"}, 1)  # going on: not looked up
    await first.process([record(5, events[3]), record(6, events[4])])  # sought back by one record
    assert (prepared.pop(), lookups) == ({"e4"}, 2)
    await processor().process([record(6, events[4]), record(7, events[5])])  # a restart
    assert (prepared.pop(), lookups) == ({"e5"}, 3)
    assert await db.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", service) == 6
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_a_batch_claims_each_new_event_once_and_none_applied_before(db: asyncpg.Pool) -> None:
    """BEGIN and the processed-events insert go in one round trip; what it takes is what the
    batch applies, whether every id is new (the insert's row count says so) or not."""
    consumer = signing_service("probe")
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with db.acquire() as conn:
        assert await begin_claiming(conn, consumer, [a, b, a]) == {a, b}  # a duplicate in the batch: once
        assert conn.is_in_transaction()
        await conn.execute("COMMIT")
        assert await begin_claiming(conn, consumer, [a, c, c, b]) == {c}  # a redelivery with one new event
        assert conn.is_in_transaction()
        await conn.execute("ROLLBACK")  # the batch failed: c is not taken
        assert await begin_claiming(conn, consumer, [c]) == {c}
        await conn.execute("ROLLBACK")
        assert await begin_claiming(conn, consumer, []) == set()
        assert conn.is_in_transaction()
        await conn.execute("ROLLBACK")
    stored = {r[0] for r in await db.fetch("SELECT event_id FROM processed_events WHERE consumer = $1", consumer)}
    assert stored == {a, b}


async def test_a_unit_of_work_writes_what_it_emits_with_its_transaction_or_not_at_all(db: asyncpg.Pool) -> None:
    service = signing_service("probe")
    async with unit_of_work(db, service) as tx:
        tx.audit("swept", name="kept")
        tx.about(None).audit("swept", name="kept-too")
    try:
        async with unit_of_work(db, service) as tx:
            tx.audit("swept", name="lost")
            raise RuntimeError("the sweep failed")
    except RuntimeError:
        pass
    rows = await db.fetch("SELECT value FROM outbox WHERE service = $1 ORDER BY id", service)
    assert [json.loads(r["value"])["data"]["name"] for r in rows] == ["kept", "kept-too"]
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_a_batch_of_several_partitions_is_one_transaction_in_arrival_order(db: asyncpg.Pool) -> None:
    """Every record of a batch, whatever its partition, is handled on one connection in one
    transaction, in the order the records came: a model's order holds on every topic, and
    the batch commits (and wakes the outbox relay) once."""
    service = signing_service("probe")
    seen: list[tuple[int, int]] = []
    connections: set[int] = set()
    transactions: set[int] = set()

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        assert tx.record is not None
        seen.append((tx.record.partition, tx.record.offset))
        connections.add(id(tx.conn))
        transactions.add(await tx.conn.fetchval("SELECT txid_current()"))
        tx.audit("probed", name=event.data.name)

    woken = 0

    def wake() -> None:
        nonlocal woken
        woken += 1

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    records = [Record("model.registered", offset % 3, offset, b"k", json.dumps(cloudevent(
        "model.registered", {"name": f"m{offset}", "artifact": artifact})).encode()) for offset in range(9)]
    await BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}), on_commit=wake).process(records)

    assert seen == [(r.partition, r.offset) for r in records]
    assert len(connections) == 1 and len(transactions) == 1
    assert woken == 1
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_rounds_of_io_go_on_while_each_brings_something_new(db: asyncpg.Pool) -> None:
    """Each event asks for its own fact, one round each (more rounds than a batch usually
    needs): the batch is applied once all are in."""
    service = signing_service("probe")
    rounds = 0

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        name = event.data.name
        if name not in tx.batch.facts:
            async def fetch(batch: Batch) -> None:
                nonlocal rounds
                rounds += 1
                batch.facts[name] = True
            raise NeedsIO(fetch, name)
        tx.audit("probed", name=name)

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    records = [record(i, cloudevent("model.registered", {"name": f"m{i}", "artifact": artifact}))
               for i in range(8)]
    await BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle})).process(records)

    assert rounds == 8
    rows = await db.fetch("SELECT value FROM outbox WHERE service = $1", service)
    assert sorted(json.loads(r["value"])["data"]["name"] for r in rows) == [f"m{i}" for i in range(8)]
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_records_a_service_does_not_select_are_passed_over_unread(db: asyncpg.Pool) -> None:
    """`select` keeps what a service has something to do with: the rest (a poison message
    among them) are never parsed, recorded or dead-lettered, yet count as consumed; a failing
    `select` passes nothing over."""
    service = signing_service("probe")
    handled: list[str] = []
    chosen: list[int] = []

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        handled.append(event.data.name)

    async def select(records):
        chosen.append(len(records))
        if len(chosen) > 1:
            raise ConnectionRefusedError("the database is down")
        return [r for r in records if r.topic == "model.registered"]

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    registered = cloudevent("model.registered", {"name": "kept", "artifact": artifact})
    batch = [record(0, registered), record(1, b"not json", topic="metrics.evaluated"),
             record(2, cloudevent("metrics.evaluated", {"name": "other", "version": 1, "metrics": {}}),
                    topic="metrics.evaluated")]
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle,
                                                             "metrics.evaluated": handle}, select=select))
    await processor.process(batch)

    assert handled == ["kept"] and processor.consumed == 3
    assert await db.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", service) == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE service = $1", service) == 0

    await processor.process(batch[1:2])  # select fails: the poison message is read, and dead-lettered
    letters = await db.fetch("SELECT value FROM outbox WHERE service = $1 AND topic = 'registry.dlq'", service)
    assert len(letters) == 1 and chosen == [3, 1]
    await db.execute("DELETE FROM outbox WHERE service = $1", service)
