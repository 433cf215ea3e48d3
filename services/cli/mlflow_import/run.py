"""`modelreg import mlflow`: read an MLflow registry, copy what is new into modelreg as events.

Two identities publish (README, Importing from MLflow): the pipeline principal registers each
version (its artifact uploaded like `modelreg register` does, an import marker on
`model.registered`), and the ops principal, for an approver (`--actor`), asks promotion to
give each version the stage it had in MLflow (`promotion.requested` with the marker).
Promotion does so once the version passed validation, without the policy's gates.

The command reads what is already here from the registry view (PostgreSQL), so a re-run only
copies versions that are new and only asks for stages that went up; it then waits until the
audit log shows every version it asked about as imported, refused or rejected.
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli.errors import UserError
from shared.events import (
    ArtifactSpec,
    ImportedFrom,
    ModelRegistered,
    ModelRegisteredData,
    PromotionRequested,
    PromotionRequestedData,
    new_event,
)
from shared.settings import Settings

from .plan import IMPORT_TAG, Existing, Step, import_marker, map_names, plan_versions, select_models
from .source import MlflowModel, MlflowSource, MlflowVersion, check_tracking_uri, probe

SOURCE = "modelreg/import-mlflow"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Options:
    tracking_uri: str
    models: str | None
    dry_run: bool
    actor: str
    champion_alias: str
    wait_seconds: float


@dataclass
class ModelWork:
    mlflow: MlflowModel
    name: str  # here
    versions: dict[int, MlflowVersion]
    steps: list[Step]


@dataclass
class Outcome:
    registered: int = 0
    requested: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the registry here


async def existing_versions(conn: Any, name: str) -> dict[int, Existing]:
    rows = await conn.fetch("SELECT version, stage, status, tags ->> $2 AS imported FROM view_versions "
                            "WHERE name = $1", name, IMPORT_TAG)
    return {r["version"]: Existing(r["stage"], r["status"], r["imported"]) for r in rows}


async def last_audit_seq(conn: Any) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))


async def settled(conn: Any, since: int, waiting: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """What became of each version asked about: rejected (why: the reasons validation or
    ingest gave), imported (its stage), or refused (why)."""
    names = sorted({n for n, _ in waiting})
    found: dict[tuple[str, int], str] = {}
    for r in await conn.fetch(
            """SELECT name, version, status, reasons FROM view_versions
               WHERE name = ANY($1::text[]) AND status IN ('rejected', 'quarantined')""", names):
        key = (r["name"], r["version"])
        if key in waiting:
            reasons = "; ".join(f"{x.get('code')}: {x.get('message')}" for x in (r["reasons"] or []))
            found[key] = f"{r['status']}: {reasons or 'see modelreg show'}"
    for r in await conn.fetch(
            """SELECT name, version, action, to_stage, reason FROM audit_log
               WHERE seq > $1 AND name = ANY($2::text[]) AND action IN ('imported', 'import_refused')
               ORDER BY seq""", since, names):
        key = (r["name"], r["version"])
        if key in waiting and key not in found:
            found[key] = (f"imported: {r['to_stage']}" if r["action"] == "imported"
                          else f"not staged: {r['reason']}")
    return found


async def ingested(conn: Any, keys: set[tuple[str, int]]) -> set[tuple[str, int]]:
    names = sorted({n for n, _ in keys})
    rows = await conn.fetch("SELECT name, version FROM view_versions WHERE name = ANY($1::text[]) "
                            "AND status <> 'registered'", names)
    return {(r["name"], r["version"]) for r in rows} & keys


# ---------------------------------------------------------------------------- events


def _bounded_tags(*sources: dict[str, str]) -> dict[str, str]:
    """MLflow's tags that fit the contract (keys up to 128, values up to 1024 characters)."""
    tags: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            if 0 < len(key) <= 128 and len(str(value)) <= 1024:
                tags[key] = str(value)
    return dict(list(tags.items())[:255])


def registration(work: ModelWork, version: MlflowVersion, options: Options, metrics: dict[str, float],
                 params: dict[str, Any], marker: ImportedFrom) -> dict[str, Any]:
    """model.registered's fields but the artifact."""
    finite = {k: float(v) for k, v in metrics.items() if len(k) <= 128 and math.isfinite(float(v))}
    kept_params = {k: v for k, v in params.items() if len(k) <= 128 and len(str(v)) <= 4096}
    return dict(
        name=work.name, version=version.version, run_id=(version.run_id or None),
        metrics=dict(list(finite.items())[:256]), params=dict(list(kept_params.items())[:256]),
        tags=_bounded_tags(work.mlflow.tags, version.tags,
                           {IMPORT_TAG: import_marker(work.mlflow.name, version.version)}),
        description=((version.description or work.mlflow.description or "")[:10_000] or None),
        registered_by=(version.user_id or "mlflow-import")[:256], imported_from=marker)


def marker_for(options: Options, work: ModelWork, version: MlflowVersion, stage: str) -> ImportedFrom:
    source = version.source if version.source and len(version.source) <= 2048 else None
    return ImportedFrom(system="mlflow", tracking_uri=options.tracking_uri, model=work.mlflow.name,
                        version=version.version, run_id=version.run_id, source=source, stage=stage,  # type: ignore[arg-type]
                        aliases=[a for a in version.aliases if len(a) <= 256])


# ---------------------------------------------------------------------------- progress


@contextmanager
def progress_bars(models: int) -> Iterator[tuple[Callable[[], None], Callable[[int], None], Callable[[int], None]]]:
    """(one model done, bytes to copy grew by n, n bytes copied): a rich progress bar on a
    terminal; nothing otherwise (the summary lines say the same)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                  console=console, disable=not console.is_terminal) as bars:
        model_task = bars.add_task("models", total=models)
        byte_task = bars.add_task("bytes ", total=0)

        def grow(n: int) -> None:
            total = bars.tasks[byte_task].total or 0
            bars.update(byte_task, total=total + n)

        yield (lambda: bars.advance(model_task), grow, lambda n: bars.advance(byte_task, n))


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------- the command


async def run_import(options: Options, pipeline: Settings, ops: Settings, out: Any = None) -> int:
    from services.cli.people import connect
    from shared.sdk import Registry

    out = out or sys.stdout
    uri = check_tracking_uri(options.tracking_uri)
    options = Options(**{**options.__dict__, "tracking_uri": uri})
    await asyncio.to_thread(probe, uri)
    source = MlflowSource(uri)
    all_models = {m.name: m for m in await asyncio.to_thread(source.models)}
    chosen = select_models(all_models, options.models)
    if not chosen:
        there = ", ".join(sorted(all_models)[:20]) or "none"
        raise UserError(f"no registered model at {uri} matches {options.models!r} (models there: {there})")
    mapped, problems = map_names(chosen)
    outcome = Outcome(skipped=[f"{name}: {why}" for name, why in sorted(problems.items())])

    conn = await connect(pipeline.dsn)
    try:
        works = []
        for mlflow_name in chosen:
            if mlflow_name not in mapped:
                continue
            versions = await asyncio.to_thread(source.versions, mlflow_name)
            model = all_models[mlflow_name]
            existing = await existing_versions(conn, mapped[mlflow_name])
            steps = plan_versions(mlflow_name, [v.for_plan() for v in versions], existing, options.champion_alias)
            works.append(ModelWork(model, mapped[mlflow_name], {v.version: v for v in versions}, steps))
        for work in works:
            renamed = f" (MLflow: {work.mlflow.name})" if work.name != work.mlflow.name else ""
            print(f"{work.name}{renamed}", file=out)
            for step in sorted(work.steps, key=lambda s: s.version):
                print(f"  v{step.version}: {step.note}", file=out)
        for line in outcome.skipped:
            print(f"skipped {line}", file=out)
        if options.dry_run:
            print("dry run: nothing copied, nothing published", file=out)
            return 0

        since = await last_audit_seq(conn)
        asked: dict[tuple[str, int], tuple[ModelWork, Step]] = {}
        async with Registry(pipeline, source=SOURCE) as registry:
            with progress_bars(len(works)) as (model_done, grow, copied):
                for work in works:
                    for step in work.steps:
                        if step.register:
                            outcome.bytes += await _copy_version(registry, source, options, work, step,
                                                                 grow, copied)
                            outcome.registered += 1
                        if step.request is not None:
                            asked[(work.name, step.version)] = (work, step)
                    model_done()
        # Ask for stages only once ingest recorded the versions, so promotion knows them (and
        # keeps new ones out of automatic staging) when the request arrives.
        await _wait_for(lambda: ingested(conn, set(asked)), set(asked), options.wait_seconds)
        async with Registry(ops, source=SOURCE) as approver:
            ordered = sorted(asked.items(), key=lambda item: (item[1][1].request == "production", item[0]))
            for (name, number), (work, step) in ordered:
                assert step.request is not None
                version = work.versions[number]
                marker = marker_for(options, work, version, step.request)
                aliases = f", aliases {', '.join(version.aliases)}" if version.aliases else ""
                data = PromotionRequestedData(
                    name=name, version=number, to_stage=step.request, actor=options.actor,  # type: ignore[arg-type]
                    reason=f"imported from MLflow {uri}: {work.mlflow.name} v{number} "
                           f"(stage {version.stage}{aliases})", imported_from=marker)
                await approver.publish(new_event(PromotionRequested, data, source=SOURCE))
                outcome.requested += 1
        return await _report(conn, since, asked, outcome, options, out)
    finally:
        await conn.close()


async def _copy_version(registry: Any, source: MlflowSource, options: Options, work: ModelWork, step: Step,
                        grow: Callable[[int], None], copied: Callable[[int], None]) -> int:
    """Download one MLflow version, upload it to the registry's inbox, publish model.registered."""
    version = work.versions[step.version]
    assert step.request is not None
    metrics, params = await asyncio.to_thread(source.run_facts, version.run_id)
    marker = marker_for(options, work, version, step.request)
    fields = registration(work, version, options, metrics, params, marker)
    placeholder = ArtifactSpec(uri="s3://x/y", sha256="0" * 64, size_bytes=0)
    ModelRegisteredData(**fields, artifact=placeholder)  # the contract holds before a long copy
    with tempfile.TemporaryDirectory(prefix="modelreg-import-") as scratch:
        local = await asyncio.to_thread(source.download, version.name, version.version, Path(scratch) / "artifact")
        size = await asyncio.to_thread(_tree_size, local)
        grow(size)
        spec = await registry.upload(work.name, local, progress=copied)
    await registry.publish(new_event(ModelRegistered, ModelRegisteredData(**fields, artifact=spec), source=SOURCE))
    return int(spec.size_bytes)


async def _wait_for(probe_done: Callable[[], Any], wanted: set[Any], seconds: float) -> Any:
    """Poll until `probe_done()` covers everything wanted, or the time is up (then what it has)."""
    deadline = time.monotonic() + seconds
    while True:
        done = await probe_done()
        if len(done) >= len(wanted) or time.monotonic() >= deadline:
            return done
        await asyncio.sleep(POLL_SECONDS)


async def _report(conn: Any, since: int, asked: dict[tuple[str, int], tuple[ModelWork, Step]], outcome: Outcome,
                  options: Options, out: Any) -> int:
    results = await _wait_for(lambda: settled(conn, since, set(asked)), set(asked), options.wait_seconds)
    for key in sorted(asked):
        print(f"{key[0]} v{key[1]}: {results.get(key, 'still waiting (see modelreg versions ' + key[0] + ')')}",
              file=out)
    print(f"imported {outcome.registered} version(s) ({outcome.bytes:,} bytes); asked for "
          f"{outcome.requested} stage(s)", file=out)
    missing = [k for k in asked if k not in results]
    if missing and options.wait_seconds > 0:
        print(f"modelreg: {len(missing)} version(s) not settled within {options.wait_seconds:g}s", file=sys.stderr)
        return 1
    return 0
