"""The audit writer's checkpoints: signed in the writer, kept write-once in S3, announced on
`registry.audit`; and read back for `modelreg audit verify`.

Write-once: each checkpoint is its own object `checkpoints/<seq>.json`, put with
`If-None-Match: *` (refused when the key exists; versitygw and AWS honour it). Where the
bucket was created with S3 Object Lock, each one also gets a COMPLIANCE retention, so not even
the bucket's owner can delete or overwrite it before `RETENTION` ends (versitygw supports this
on buckets created with object lock enabled; the local stack's bucket is not, so there the
conditional put is the guard). Checkpoint objects live under a prefix a deployment can also
protect with a bucket policy that denies s3:DeleteObject on `checkpoints/*`.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
from botocore.exceptions import ClientError

from shared import metrics
from shared.consumer import unit_of_work
from shared.events import UNKNOWN_MODEL
from shared.keys import SigningKey
from shared.storage import ObjectStore, S3Location, is_missing, is_retryable

from . import store
from .chain import Problem
from .checkpoint import ACTION, PREFIX, Checkpoint, SegmentCheck, due, record_evidence, sign

log = logging.getLogger(__name__)

SERVICE = "audit"
RETENTION = timedelta(days=3650)
# One checkpoint writer at a time across instances (pg_try_advisory_xact_lock key).
CHECKPOINT_LOCK = 0x6D72_6175_6463_6B70  # "mraudckp"
# How often the writer looks whether a checkpoint is due, at most.
POLL_SECONDS = 1.0
# A checkpoint is about a kilobyte; an object under checkpoints/ far bigger is not one.
MAX_CHECKPOINT_BYTES = 1024 * 1024

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CheckpointObjects:
    """Checkpoints as write-once objects in the registry bucket."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.bucket = objects.bucket
        self._locked_bucket: bool | None = None

    async def put(self, checkpoint: Checkpoint) -> bool:
        """Store `checkpoint` unless its key exists (False then: another writer made it)."""
        body = checkpoint.to_json()
        location = S3Location(self.bucket, checkpoint.key)
        # Asked first: a fault while asking must leave nothing stored that the next tick's
        # conditional put would then find, unrecorded and unlocked.
        locked = await self._object_lock()
        if not await self.objects.put_if_absent(location, body, hashlib.sha256(body).hexdigest()):
            return False
        if locked:
            await (await self.objects.boto()).put_object_retention(
                Bucket=self.bucket, Key=checkpoint.key,
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": checkpoint.time + RETENTION})
        return True

    async def _object_lock(self) -> bool:
        if self._locked_bucket is None:
            try:  # (on LeanS3: a writer on a bucket without object lock never opens aioboto3)
                enabled = await self.objects.object_lock_enabled()
            except ClientError as exc:
                if is_retryable(exc):
                    raise  # not an answer: asked again at the next checkpoint
                enabled = False  # not allowed to ask, or no object lock on this server
            if not enabled:
                log.info("bucket %s has no S3 Object Lock: audit checkpoints are write-once by "
                         "conditional put only", self.bucket)
            self._locked_bucket = enabled
        return self._locked_bucket

    async def keys(self) -> list[str]:
        try:
            found = await self.objects.list_prefix(self.bucket, PREFIX, sys.maxsize)
        except ClientError as exc:
            if is_missing(exc):
                return []
            raise
        return sorted(key for key, _size in found)

    async def read(self, key: str) -> Checkpoint:
        data = await self.objects.read_at_most(S3Location(self.bucket, key), MAX_CHECKPOINT_BYTES)
        if data is None:
            raise ValueError(f"{key} is over {MAX_CHECKPOINT_BYTES} bytes: not a checkpoint")
        checkpoint = Checkpoint.from_json(data)
        if checkpoint.key != key:
            raise ValueError(f"{key} holds the checkpoint of seq {checkpoint.seq}")
        return checkpoint

    async def all(self) -> tuple[list[Checkpoint], list[Problem]]:
        """Every checkpoint in the bucket, and a problem for each object that is not one."""
        checkpoints, problems = [], []
        for key in await self.keys():
            try:
                checkpoints.append(await self.read(key))
            except ValueError as exc:
                problems.append(Problem(None, None, "checkpoint not readable", f"{key}: {exc}"))
        return checkpoints, problems

    async def latest(self) -> Checkpoint | None:
        for key in reversed(await self.keys()):
            try:
                return await self.read(key)
            except ValueError as exc:
                log.error("skipping unreadable audit checkpoint %s: %s", key, exc)
        return None


class Checkpointer:
    """Signs the chain head every N records or T seconds, if the rows since its last
    checkpoint link on from it; otherwise it refuses, loudly, and signs nothing."""

    def __init__(self, pool: asyncpg.Pool, objects: CheckpointObjects, key: SigningKey, *,
                 every_records: int, every_seconds: float, clock: Clock = _utcnow) -> None:
        self.pool = pool
        self.objects = objects
        self.key = key
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.clock = clock
        self.started = clock()
        self.last: Checkpoint | None = None
        self.refused: str | None = None  # why the last due checkpoint was not signed
        self._loaded = False

    @property
    def poll_seconds(self) -> float:
        return min(POLL_SECONDS, self.every_seconds)

    async def tick(self, *, force: bool = False) -> Checkpoint | None:
        """Sign and store a checkpoint if one is due (`force`: whenever there is anything new)."""
        if not self._loaded:
            self.last = await self.objects.latest()
            self._loaded = True
        # A session lock, not a transaction's: the checkpoint is stored in S3 while it is held,
        # and no S3 call runs inside an open transaction. Pooled connections are not reset
        # (shared/db.py): should the unlock fail, the connection is closed, which unlocks.
        async with self.pool.acquire() as lent:
            conn = cast(asyncpg.Connection, lent)  # the pool's proxy forwards every Connection method
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHECKPOINT_LOCK):
                return None  # another instance is at it
            try:
                checkpoint = await self._sign_head(conn, force=force)
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", CHECKPOINT_LOCK)
                except BaseException:
                    conn.terminate()
                    raise
        if checkpoint is None:
            return None
        self.last = checkpoint
        metrics.AUDIT_CHECKPOINT_SEQ.set(checkpoint.seq)
        log.info("signed audit checkpoint at seq %s (%s records)", checkpoint.seq, checkpoint.records)
        return checkpoint

    async def _sign_head(self, conn: asyncpg.Connection, *, force: bool) -> Checkpoint | None:
        """Check the segment since the last checkpoint and sign its head (a snapshot read),
        store the checkpoint, then record it in the audit log (a transaction of its own)."""
        async with conn.transaction(isolation="repeatable_read"):
            head = await store.read_head(conn)
            after = self.last.seq if self.last else 0
            if head is None or head.last_seq <= after:
                return None
            fresh = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM audit_log WHERE seq > $1 AND seq <= $2 AND action <> $3)",
                after, head.last_seq, ACTION)
            now = self.clock()
            if not force and not due(head, self.last, since=self.last.time if self.last else self.started,
                                     now=now, fresh=fresh, every_records=self.every_records,
                                     every_seconds=self.every_seconds):
                return None
            segment = SegmentCheck(self.last)
            async for row in store.rows(conn, after=after, upto=head.last_seq):
                segment.feed(row)
        if (problem := segment.finish(head)) is not None:
            metrics.AUDIT_CHECKPOINT_REFUSALS.inc()
            if problem != self.refused:
                log.error("not signing the audit chain head at seq %s: %s; the log was changed "
                          "outside the audit writer (run `modelreg audit verify`)", head.last_seq, problem)
            self.refused = problem
            return None
        self.refused = None
        checkpoint = sign(self.key, head, now)
        if not await self.objects.put(checkpoint):
            self.last = await self.objects.latest()
            return None
        async with unit_of_work(self.pool, SERVICE) as tx:
            tx.audit(ACTION, name=UNKNOWN_MODEL, reason=f"signed checkpoint of the audit chain at seq {head.last_seq}",
                     evidence=record_evidence(checkpoint, self.objects.bucket))
        return checkpoint
