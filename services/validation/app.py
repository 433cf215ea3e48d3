"""validation: `model.ingested` -> checks -> `model.validated` + `qa.requested` | `model.rejected`."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import orjson
from botocore.exceptions import ClientError

from shared import telemetry
from shared.consumer import Batch, ServiceHandlers, TraceParents, Tx
from shared.events import (
    CloudEvent,
    ModelIngested,
    ModelIngestedData,
    ModelRejected,
    ModelRejectedData,
    ModelValidated,
    ModelValidatedData,
    QaArtifact,
    QaRequested,
    QaRequestedData,
    RejectedEvidence,
    ValidatedEvidence,
)
from shared.manifest import compare
from shared.model_signatures import SignatureVerdict
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings
from shared.storage import S3Location, is_missing, parse_s3_uri

from .logic import (
    ArtifactFacts,
    artifact_label,
    combine_scans,
    declared_format_problem,
    file_format,
    needs_scan,
    rejection_reasons,
    run_checks,
    siblings_of,
)
from .scan import SCAN_IN_MEMORY_BYTES, ArtifactScan, Limits, scan_stream
from .signature import CHECK as SIGNATURE_CHECK
from .signature import judge_signature, signature_check, signature_to_read

SERVICE = "validation"
READS_IN_FLIGHT = 8
HEAD_BYTES = 4096  # read before deciding whether an artifact needs the safety scan
# At most READS_IN_FLIGHT x FILES_IN_FLIGHT scan spools (8 MiB) are in memory at once.
FILES_IN_FLIGHT = 4  # files of one directory artifact read at once
EXTRA_LISTED = 100  # files beyond the manifest's that a listing names (enough to show the problem)


@dataclass(frozen=True)
class Inspected:
    """What reading one version's stored artifact found, before its transaction."""

    facts: ArtifactFacts
    signature: SignatureVerdict | None


class Validation:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    async def prepare(self, batch: Batch, events: Sequence[CloudEvent[Any]], parents: TraceParents) -> None:
        """Read every stored artifact once: hash it, and scan it where it may be a pickle (an
        `Inspected` per event id in `batch.facts`)."""
        inspected: dict[uuid.UUID, Inspected] = batch.facts
        limit = asyncio.Semaphore(READS_IN_FLIGHT)

        async def inspect(event: CloudEvent[ModelIngestedData]) -> None:
            async with limit:
                with telemetry.span("validation inspect artifact", parent=parents.get(event.id),
                                    attributes={"modelreg.model": event.data.name,
                                                "modelreg.version": event.data.version}):
                    inspected[event.id] = Inspected(await self._inspect(event.data),
                                                    await self._signature(event.data))

        async with asyncio.TaskGroup() as group:
            for event in events:
                group.create_task(inspect(event))

    async def _signature(self, data: ModelIngestedData) -> SignatureVerdict | None:
        """The verdict on the directory's model.sig under the rule's signing policy."""
        rule = self.resources.policy.rule_for(data.name).signing
        manifest = data.artifact.manifest()
        entry = signature_to_read(rule, manifest)
        bundle = None
        if entry is not None:
            try:
                prefix = parse_s3_uri(data.artifact.uri)
                bundle = b"".join([chunk async for chunk in self.resources.store.stream(
                    S3Location(prefix.bucket, prefix.key + entry.path))])
            except ValueError:
                bundle = None
            except ClientError as exc:
                if not is_missing(exc):
                    raise
        return judge_signature(rule, manifest, bundle)

    async def _inspect(self, data: ModelIngestedData) -> ArtifactFacts:
        try:
            location = parse_s3_uri(data.artifact.uri)
        except ValueError:
            return ArtifactFacts(present=False)
        rule = self.resources.policy.rule_for(data.name).validation
        if data.artifact.files is not None:
            return await self._inspect_directory(data, location, rule.pickle_allow)
        read = await self._read(location, data.artifact.format, artifact_label(data), rule.pickle_allow)
        if read is None:
            return ArtifactFacts(present=False)
        sha256, size, scan = read
        if scan is None:
            return ArtifactFacts(present=True, sha256=sha256, size_bytes=size)
        return ArtifactFacts(present=True, sha256=sha256, size_bytes=size,
                             scanned=scan.examined, pickle_safe=scan.safe, pickle_detail=scan.detail())

    async def _inspect_directory(self, data: ModelIngestedData, prefix: S3Location,
                                 allowed: tuple[str, ...]) -> ArtifactFacts:
        """Every file of the manifest read back, hashed, and scanned as its own format; the
        prefix listed for files the manifest does not name."""
        manifest = data.artifact.manifest() or []
        paths = [entry.path for entry in manifest]
        limit = asyncio.Semaphore(FILES_IN_FLIGHT)
        deadline = time.monotonic() + Limits().max_seconds  # one scan-time budget for the directory
        found: dict[str, tuple[str, int] | None] = {}
        scans: dict[str, ArtifactScan] = {}

        async def read(path: str) -> None:
            async with limit:
                limits = Limits(max_seconds=max(0.0, deadline - time.monotonic()))
                result = await self._read(S3Location(prefix.bucket, prefix.key + path),
                                          file_format(data.artifact.format, path), path, allowed,
                                          siblings=siblings_of(path, paths), limits=limits)
            found[path] = None if result is None else result[:2]
            if result is not None and result[2] is not None:
                scans[path] = result[2]

        async with asyncio.TaskGroup() as group:
            for path in paths:
                group.create_task(read(path))
        extra = [path for path, _ in await self.resources.store.list_files(prefix, len(paths) + EXTRA_LISTED)]
        discrepancies = tuple(compare(manifest, found, extra))
        scanned, safe, detail = combine_scans(scans, declared_format_problem(data.artifact.format, paths))
        return ArtifactFacts(present=all(found.values()), sha256=data.artifact.sha256,
                             size_bytes=sum(entry.size_bytes for entry in manifest), scanned=scanned,
                             pickle_safe=safe, pickle_detail=detail, discrepancies=discrepancies)

    async def _read(self, location: S3Location, fmt: str | None, label: str, allowed: tuple[str, ...], *,
                    siblings: frozenset[str] | None = None,
                    limits: Limits | None = None) -> tuple[str, int, ArtifactScan | None] | None:
        """Stream one stored object: (sha256, size, the scan if it needed one), None if missing.
        Only what needs the scan is spooled (in memory while small, else to a temporary file);
        nothing big is held whole."""
        hasher, size = hashlib.sha256(), 0
        head = b""  # the first bytes, enough to tell whether a pickle could be in there
        decided = False
        spool: tempfile.SpooledTemporaryFile[bytes] | None = None

        async def spooled(chunk: bytes) -> None:
            assert spool is not None
            if spool.tell() + len(chunk) <= SCAN_IN_MEMORY_BYTES:
                spool.write(chunk)
            else:  # rolls over to (or already is) a file on disk
                await asyncio.to_thread(spool.write, chunk)

        try:
            async for chunk in self.resources.store.stream(location):
                hasher.update(chunk)
                size += len(chunk)
                if spool is not None:
                    await spooled(chunk)
                    continue
                if not decided:
                    head += chunk
                    if len(head) < HEAD_BYTES:
                        continue
                    decided = True
                    if needs_scan(fmt, head):
                        spool = tempfile.SpooledTemporaryFile(SCAN_IN_MEMORY_BYTES, prefix="modelreg-scan-")
                        await spooled(head)
                    head = b""
            if not decided and needs_scan(fmt, head):  # a file shorter than HEAD_BYTES
                spool = tempfile.SpooledTemporaryFile(SCAN_IN_MEMORY_BYTES, prefix="modelreg-scan-")
                await spooled(head)
            if spool is None:
                return hasher.hexdigest(), size, None
            spool.seek(0)
            # typeshed's SpooledTemporaryFile is not a BinaryIO; it has every method one has.
            scan = await asyncio.to_thread(scan_stream, cast(BinaryIO, spool), declared_format=fmt, label=label,
                                           extra_allowed=allowed, siblings=siblings,
                                           limits=limits or Limits(), stored_bytes=size)
            return hasher.hexdigest(), size, scan
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        finally:
            if spool is not None:
                spool.close()  # a rolled-over spool's file has no name: closing removes it

    async def on_ingested(self, tx: Tx, event: ModelIngested) -> None:
        data = event.data
        rule = self.resources.policy.rule_for(data.name)
        inspected: Inspected = tx.batch.facts[event.id]
        checks = run_checks(data, inspected.facts, rule.validation)
        signature = inspected.signature
        if signature is not None:
            checks.append(signature_check(signature))
        passed = all(c.passed for c in checks)
        checked = [c.model_dump() for c in checks]
        results: Results = tx.batch.scope
        results[(data.name, data.version)] = (passed, checked, list(rule.required_suites))
        revision = self.resources.policy.revision
        if not passed:
            reasons = rejection_reasons(checks, {SIGNATURE_CHECK: signature.code} if signature and signature.code
                                        else None)
            tx.emit(ModelRejected, ModelRejectedData(name=data.name, version=data.version, reasons=reasons))
            tx.audit("rejected", name=data.name, version=data.version, reason="; ".join(r.message for r in reasons),
                     evidence=RejectedEvidence(checks=checked, policy_revision=revision))
            return
        tx.emit(ModelValidated, ModelValidatedData(name=data.name, version=data.version, checks=checks))
        tx.emit(QaRequested, QaRequestedData(
            name=data.name, version=data.version, suites=list(rule.required_suites),
            artifact=QaArtifact(uri=data.artifact.uri, sha256=data.artifact.sha256)))
        tx.audit("validated", name=data.name, version=data.version, reason="every check passed",
                 evidence=ValidatedEvidence(checks=checked, policy_revision=revision,
                                            qa_suites=list(rule.required_suites)))


# A batch's verdicts by version: (passed, checks, required suites), the last one of a version kept.
Results = dict[tuple[str, int], tuple[bool, list[dict[str, Any]], list[str]]]


@asynccontextmanager
async def record_results(conn: Any, _events: list[Any]) -> AsyncIterator[Results]:
    """The batch's verdicts, written in one statement once its handlers have decided them all
    (nothing in the batch reads them back)."""
    results: Results = {}
    yield results
    if results:
        await conn.execute(
            # JSON as text: a list of lists would be taken for a two-dimensional array.
            """INSERT INTO validation_results (name, version, passed, checks, suites)
               SELECT n, v, p, c::jsonb, s::jsonb
               FROM unnest($1::text[], $2::int[], $3::boolean[], $4::text[], $5::text[]) AS t(n, v, p, c, s)
               ON CONFLICT (name, version) DO UPDATE
               SET passed = EXCLUDED.passed, checks = EXCLUDED.checks, suites = EXCLUDED.suites,
                   validated_at = now()""",
            [name for name, _ in results], [version for _, version in results],
            [passed for passed, _, _ in results.values()],
            [orjson.dumps(checks).decode() for _, checks, _ in results.values()],
            [orjson.dumps(suites).decode() for _, _, suites in results.values()])


def build(resources: Resources) -> ServiceHandlers:
    validation = Validation(resources)
    return ServiceHandlers(SERVICE, {"model.ingested": validation.on_ingested}, prepare=validation.prepare,
                           batch_scope=record_results)


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
