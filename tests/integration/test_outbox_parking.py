"""The outbox relay on a real database (and, for ACLs, a real Kafka): a row Kafka refuses for
good is parked and holds back its model only; a passing failure never reorders a model's
events; ops retry or discard parked rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber, TopicAuthorizationFailedError

from shared import parked_outbox
from shared.db import connect
from shared.events import TOPICS
from shared.kafka_acls import may_write
from shared.outbox import OutboxRelay, OutboxRow, write_outbox
from shared.runtime import OutboxProducer
from shared.settings import Settings
from tests.support import Kafka, settings_for, signing_service


class ScriptedKafka:
    """Kafka transactions that fail chosen rows (by payload) as told, and record what was
    committed, in order (an aborted transaction's rows never count as sent)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, bytes]] = []
        self.fail: dict[bytes, list[BaseException]] = {}
        self.aborted: list[list[bytes]] = []
        self.alone: list[bytes] = []  # sent without a transaction
        self.replacements = 0
        self._open: list[tuple[str | None, bytes]] | None = None

    async def begin(self) -> None:
        assert self._open is None, "a transaction is already open"
        self._open = []

    async def send(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
        assert self._open is not None, "sent outside a transaction"
        return await self._deliver(value, self._open.append, key)

    async def send_alone(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
        """Outside a transaction: Kafka has it (and consumers read it) once acknowledged."""
        assert self._open is None, "sent alone while a transaction is open"

        def take(record: tuple[str | None, bytes]) -> None:
            self.sent.append(record)
            self.alone.append(record[1])

        return await self._deliver(value, take, key)

    async def _deliver(self, value: bytes, take: Callable[[tuple[str | None, bytes]], None],
                       key: str | None) -> asyncio.Future[Any]:
        """A future that fails as scripted for this payload, or resolves once `take` has it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        errors = self.fail.get(_payload(value))
        if errors:
            future.set_exception(errors.pop(0))
        else:
            take((key, _payload(value)))
            future.set_result(None)
        await asyncio.sleep(0)  # let other tasks run, as a real producer would
        return future

    async def commit(self) -> None:
        assert self._open is not None
        self.sent.extend(self._open)
        self._open = None

    async def replace(self) -> None:
        """What a fresh producer with the same transactional id does: Kafka aborts what the
        old one left open."""
        self.replacements += 1
        if self._open is not None:
            self.aborted.append([value for _, value in self._open])
            self._open = None

    async def topic_exists(self, topic: str) -> bool | None:
        return True

    def order_of(self, key: str) -> list[bytes]:
        return [value for k, value in self.sent if k == key]


def _payload(signed_value: bytes) -> bytes:
    """The test's label inside the signed event."""
    return json.loads(signed_value)["id"].encode()


def _row(key: str | None, label: str, topic: str = "model.ingested") -> OutboxRow:
    return OutboxRow(topic=topic, key=key, value=json.dumps({"id": label, "subject": key}).encode(),
                     headers={"content-type": "application/cloudevents+json"})


async def _write(conn: asyncpg.Connection, service: str, rows: list[OutboxRow]) -> None:
    async with conn.transaction():
        await write_outbox(conn, service, rows)


async def test_a_refused_row_parks_and_holds_back_only_its_model(settings: Settings, db: asyncpg.Pool) -> None:
    service = signing_service("outbox-park")
    kafka = ScriptedKafka()
    relay = OutboxRelay(settings.dsn, service, kafka, settings.topic, batch_size=100)
    kafka.fail[b"a1"] = [TopicAuthorizationFailedError("model.ingested")]
    conn = await connect(settings.dsn)
    try:
        await _write(conn, service, [_row("a", "a1"), _row("b", "b1"), _row("a", "a2"), _row("b", "b2"),
                                     _row(None, "loose")])
        done = await relay.relay_once(conn)
        assert (done.sent, done.parked, done.retry) == (3, 1, 0)
        assert kafka.order_of("b") == [b"b1", b"b2"] and kafka.order_of("a") == []
        assert (None, b"loose") in kafka.sent
        # a2 had gone out behind a1 in the first attempt: aborted with it, it was never read.
        assert [b"a2" in attempt for attempt in kafka.aborted] == [True]
        # Model a's next rows wait behind its parked row, however many passes run; b keeps flowing.
        await _write(conn, service, [_row("a", "a3"), _row("b", "b3")])
        await relay.relay_once(conn)
        assert (await relay.relay_once(conn)).moved == 0
        assert kafka.order_of("a") == [] and kafka.order_of("b") == [b"b1", b"b2", b"b3"]
        parked = await parked_outbox.list_parked(conn, service=service)
        assert [(p["key"], p["reason"], p["held_back"]) for p in parked] == [("a", "authorization", 2)]
        assert "TopicAuthorizationFailedError" in parked[0]["error"]
        assert await relay.backlog(conn) == 2

        # Ops fix the cause and retry: the parked row goes first, then the ones it held back.
        assert await parked_outbox.retry_parked(conn, [parked[0]["id"]]) == [parked[0]["id"]]
        assert await parked_outbox.retry_parked(conn, [parked[0]["id"]]) == []  # once only
        while (await relay.relay_once(conn)).moved:
            pass
        assert kafka.order_of("a") == [b"a1", b"a2", b"a3"]
        assert await parked_outbox.list_parked(conn, service=service) == []
        assert await relay.backlog(conn) == 0
    finally:
        await conn.close()


async def test_a_pass_with_one_row_per_model_goes_without_a_transaction(settings: Settings,
                                                                        db: asyncpg.Pool) -> None:
    """No model has a second row to hold back: each row goes on its own, and one that fails
    waits alone while the others are read at once; a model's two rows on one topic go in a
    transaction, its rows on two topics alone."""
    service = signing_service("outbox-alone")
    kafka = ScriptedKafka()
    relay = OutboxRelay(settings.dsn, service, kafka, settings.topic, batch_size=100)
    kafka.fail[b"b1"] = [KafkaConnectionError()]
    conn = await connect(settings.dsn)
    try:
        await _write(conn, service, [_row("a", "a1"), _row("b", "b1"), _row("c", "c1"), _row(None, "loose")])
        done = await relay.relay_once(conn)
        assert (done.sent, done.parked, done.retry) == (3, 0, 1)
        assert sorted(kafka.alone) == [b"a1", b"c1", b"loose"] and kafka.aborted == []
        assert kafka.replacements == 1  # a failure may leave aiokafka's producer out of step
        assert (await relay.relay_once(conn)).sent == 1 and kafka.order_of("b") == [b"b1"]

        await _write(conn, service, [_row("a", "a2"), _row("a", "a3"), _row("c", "c2")])
        assert (await relay.relay_once(conn)).sent == 3
        assert kafka.order_of("a") == [b"a1", b"a2", b"a3"] and b"a2" not in kafka.alone  # in a transaction

        # A model's event and its audit record are on two topics: no order between them to keep.
        await _write(conn, service, [_row("d", "d1"), _row("d", "d1-audit", topic="registry.audit")])
        assert (await relay.relay_once(conn)).sent == 2
        assert kafka.alone[-2:] == [b"d1", b"d1-audit"]
        assert await relay.backlog(conn) == 0
    finally:
        await conn.close()


async def test_a_passing_failure_never_lets_a_models_later_event_overtake(settings: Settings,
                                                                        db: asyncpg.Pool) -> None:
    service = signing_service("outbox-order")
    kafka = ScriptedKafka()
    relay = OutboxRelay(settings.dsn, service, kafka, settings.topic, batch_size=100)
    # The second of model m's five events fails twice (Kafka unreachable), the others would go.
    kafka.fail[b"m2"] = [KafkaConnectionError(), KafkaConnectionError()]
    conn = await connect(settings.dsn)
    try:
        await _write(conn, service, [_row("m", f"m{i}") for i in range(1, 6)] + [_row("n", "n1")])
        first = await relay.relay_once(conn)
        assert (first.sent, first.retry, first.parked) == (2, 1, 0)  # m1 and n1; m2 failed; m3.. not tried
        assert kafka.order_of("m") == [b"m1"]
        assert (await relay.relay_once(conn)).retry == 1
        while (await relay.relay_once(conn)).moved:
            pass
        # Each event went out once, in the order it was written: nothing overtook m2.
        assert kafka.order_of("m") == [b"m1", b"m2", b"m3", b"m4", b"m5"]
        assert await parked_outbox.list_parked(conn, service=service) == []
    finally:
        await conn.close()


async def test_a_producer_left_out_of_step_by_an_outage_is_replaced(settings: Settings, db: asyncpg.Pool) -> None:
    """A failure can leave aiokafka's producer failing with OutOfOrderSequenceNumber for good
    (aiokafka issue 1017): the relay ends a failed transaction with a fresh producer, and the
    rows go, in order."""
    service = signing_service("outbox-replace")

    class LeftOutOfStep(ScriptedKafka):
        async def replace(self) -> None:
            await super().replace()
            if self.replacements > 1:  # the first is the fresh producer of taking the lead, before the failure
                self.fail.clear()

    kafka = LeftOutOfStep()
    kafka.fail[b"s1"] = [OutOfOrderSequenceNumber() for _ in range(1000)]  # for as long as this producer lives
    relay = OutboxRelay(settings.dsn, service, kafka, settings.topic, poll_interval=0.05)
    conn = await connect(settings.dsn)
    try:
        await _write(conn, service, [_row("s", "s1"), _row("s", "s2")])
        running = asyncio.create_task(relay.run())
        try:
            for _ in range(200):
                if kafka.order_of("s") == [b"s1", b"s2"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            running.cancel()
        assert kafka.order_of("s") == [b"s1", b"s2"] and kafka.replacements == 2
        assert await parked_outbox.list_parked(conn, service=service) == []
    finally:
        await conn.close()


async def test_discarding_a_parked_row_releases_its_model(settings: Settings, db: asyncpg.Pool) -> None:
    service = signing_service("outbox-discard")
    kafka = ScriptedKafka()
    relay = OutboxRelay(settings.dsn, service, kafka, settings.topic, batch_size=100)
    conn = await connect(settings.dsn)
    try:
        # A header that is not text cannot become a Kafka record, on any attempt.
        async with conn.transaction():
            await write_outbox(conn, service, [_row("d", "d1")])
            await conn.execute("""UPDATE outbox SET headers = '{"content-type": 7}' WHERE service = $1""", service)
        await _write(conn, service, [_row("d", "d2")])
        done = await relay.relay_once(conn)
        assert (done.sent, done.parked) == (0, 1)
        [parked] = await parked_outbox.list_parked(conn, service=service)
        assert parked["reason"] == "serialization"
        assert await parked_outbox.discard_parked(conn, [parked["id"]], "ops/tester") == [parked["id"]]
        await relay.relay_once(conn)
        assert kafka.order_of("d") == [b"d2"]
        [kept] = await parked_outbox.list_parked(conn, service=service, include_discarded=True)
        assert (kept["state"], kept["discarded_by"]) == ("discarded", "ops/tester")
        assert await parked_outbox.retry_parked(conn, [parked["id"]]) == []  # a discarded row stays discarded
    finally:
        await conn.close()


async def test_a_topic_the_principal_may_not_write_parks_on_real_kafka(settings: Settings, db: asyncpg.Pool,
                                                                      kafka: Kafka, endpoints: Any) -> None:
    """ingest's own Kafka principal, held to its ACLs: an event for a topic it may not write is
    parked (reason authorization) while its other events reach their topic, its model's own
    on other topics included; its model's later events on that topic wait behind it."""
    forbidden = next(t for t in TOPICS if not may_write("ingest", t, settings.topic_prefix))
    allowed = "model.ingested"
    assert may_write("ingest", allowed, settings.topic_prefix)
    assert endpoints.kafka_principal_env, "this test needs a Kafka with per-principal ACLs (the local stack has them)"
    principal = settings_for(settings, endpoints.kafka_principal_env["ingest"])
    producer = OutboxProducer(principal, "ingest")  # ingest's transactional id, which its ACLs grant
    await producer.start()

    service = signing_service("outbox-acl")
    relay = OutboxRelay(settings.dsn, service, producer, settings.topic, batch_size=100)
    blocked, flowing = f"acl-{uuid.uuid4().hex[:8]}", f"acl-{uuid.uuid4().hex[:8]}"
    conn = await connect(settings.dsn)
    try:
        await _write(conn, service, [_row(blocked, "x1", topic=forbidden), _row(blocked, "x2", topic=allowed),
                                     _row(flowing, "y1", topic=allowed)])
        done = await relay.relay_once(conn)
        assert (done.sent, done.parked, done.retry) == (2, 1, 0)
        [parked] = await parked_outbox.list_parked(conn, service=service)
        assert (parked["key"], parked["topic"], parked["reason"]) == (blocked, forbidden, "authorization")
        await kafka.wait_for(allowed, lambda s: s.key == flowing)
        await kafka.wait_for(allowed, lambda s: s.key == blocked)
        # Besides the alert metric, the audit log hears of it: the next pass sends the record
        # (unkeyed, so the parked row it reports does not hold it back), not the model's later
        # event on the refused topic, which waits behind the parked one.
        await _write(conn, service, [_row(blocked, "x3", topic=forbidden)])
        assert (await relay.relay_once(conn)).sent == 1
        assert await relay.backlog(conn) == 1
        [audited] = await kafka.wait_for("registry.audit", lambda s: s.data.get("action") == "outbox_parked"
                                         and s.data.get("name") == blocked)
        assert audited.key is None and audited.data["actor"] == f"modelreg/{service}"
        assert {k: audited.data["evidence"][k] for k in ("topic", "reason", "outbox_id")} == \
            {"topic": forbidden, "reason": "authorization", "outbox_id": parked["id"]}
        assert audited.data["reason"].startswith("authorization: TopicAuthorizationFailedError")
    finally:
        await conn.close()
        await producer.stop()


async def test_the_relay_acts_as_its_services_database_role(settings: Settings, db: asyncpg.Pool,
                                                            caplog: Any) -> None:
    """The relay's own connection takes the service's role as its pool does: as ingest it
    publishes ingest's rows; as a role without rights on the outbox, it is refused."""
    service = signing_service("outbox-role")
    conn = await connect(settings.dsn)
    try:
        await conn.execute("""DO $$ BEGIN
                                  CREATE ROLE modelreg_test_no_rights NOLOGIN;
                              EXCEPTION WHEN duplicate_object THEN NULL; END $$""")
        await _write(conn, service, [_row("r", "r1")])
    finally:
        await conn.close()
    refused = ScriptedKafka()
    as_api = asyncio.create_task(OutboxRelay(settings.dsn, service, refused, settings.topic,
                                             poll_interval=0.05, role="modelreg_test_no_rights").run())
    try:
        for _ in range(200):
            if any("permission denied" in r.getMessage() or "permission denied" in str(r.exc_info)
                   for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no permission error logged: {[r.getMessage() for r in caplog.records]}")
    finally:
        as_api.cancel()
    assert refused.sent == []
    allowed = ScriptedKafka()
    as_ingest = asyncio.create_task(OutboxRelay(settings.dsn, service, allowed, settings.topic,
                                                poll_interval=0.05, role="modelreg_ingest").run())
    try:
        for _ in range(200):
            if allowed.sent:
                break
            await asyncio.sleep(0.05)
        assert allowed.order_of("r") == [b"r1"]
    finally:
        as_ingest.cancel()
