"""What `modelreg import mlflow` does, decided on plain data: which MLflow models to take,
under which names, which stage each version should have here, and what to publish for it.

Nothing here does I/O; `run.py` reads MLflow and the registry, calls these, and acts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from shared.events import MODEL_NAME_PATTERN

# The tag an imported version carries here, naming where it came from: a re-run recognises its
# own versions by it, and never touches a version of the same number registered another way.
IMPORT_TAG = "modelreg.imported_from"
_STAGE_ORDER = {"none": 0, "staging": 1, "production": 2}
_MLFLOW_STAGES = {"none": "none", "staging": "staging", "production": "production", "archived": "none"}


class GlobError(ValueError):
    """A --models pattern that cannot mean what the person wanted."""


def check_glob(glob: str) -> str:
    """The pattern, or GlobError saying why it is not one (fnmatch would silently take an
    unclosed '[' literally, so a typo would match nothing without a word)."""
    if not glob.strip():
        raise GlobError("--models is empty; give a pattern such as 'fraud-*' or leave it out for every model")
    depth = 0
    for char in glob:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise GlobError(f"--models {glob!r} opens a '[' character class it never closes")
    return glob


def select_models(names: Iterable[str], glob: str | None) -> list[str]:
    """MLflow model names the pattern matches (case-sensitive, as MLflow's names are), sorted."""
    return sorted(n for n in names if glob is None or fnmatchcase(n, glob))


def registry_name(mlflow_name: str) -> str | None:
    """The name a model gets here: lower case, runs of other characters as '-' (MLflow allows
    spaces and capitals; modelreg's names are lower-case slugs). None when nothing is left."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", mlflow_name.lower()).strip("-._")[:128]
    return slug if slug and re.match(MODEL_NAME_PATTERN, slug) else None


def map_names(mlflow_names: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(MLflow name -> name here, MLflow name -> why it is skipped). Two MLflow models that
    would share a name here are both skipped rather than merged."""
    wanted: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    for name in mlflow_names:
        slug = registry_name(name)
        if slug is None:
            problems[name] = "its name has no letter or digit to make a modelreg name of"
        else:
            wanted.setdefault(slug, []).append(name)
    mapped = {}
    for slug, sources in wanted.items():
        if len(sources) == 1:
            mapped[sources[0]] = slug
        else:
            for name in sources:
                problems[name] = f"{', '.join(sorted(sources))} would all be named {slug!r} here"
    return mapped, problems


@dataclass(frozen=True)
class SourceVersion:
    """One MLflow model version as the plan needs it."""

    version: int
    stage: str  # MLflow's current_stage: None, Staging, Production, Archived
    aliases: tuple[str, ...] = ()
    ready: bool = True  # MLflow's status READY (PENDING/FAILED registrations have no artifact)


def target_stages(versions: Sequence[SourceVersion], champion_alias: str) -> dict[int, str]:
    """The stage each version takes here. The champion alias names the champion; without it,
    the newest version in MLflow's Production stage is. Only one champion: another version in
    Production over there stays in none here. Staging stays staging; None and Archived are none
    (an archived version's artifact is imported like any other, restorable by hand)."""
    targets = {v.version: _MLFLOW_STAGES.get(v.stage.lower(), "none") for v in versions}
    champion = next((v.version for v in versions if champion_alias in v.aliases), None)
    if champion is None:
        champion = max((v.version for v in versions if targets[v.version] == "production"), default=None)
    for version, stage in targets.items():
        if stage == "production" and version != champion:
            targets[version] = "none"
    if champion is not None:
        targets[champion] = "production"
    return targets


@dataclass(frozen=True)
class Existing:
    """A version of the same model and number already here."""

    stage: str
    status: str  # the registry view's: registered, ingested, validated, rejected, quarantined
    imported_from: str | None  # the IMPORT_TAG it carries, if any


@dataclass(frozen=True)
class Step:
    version: int
    register: bool           # copy the artifact and publish model.registered
    request: str | None      # publish an import request for this stage (None: nothing to ask)
    note: str                # what happens, for the person running it


def import_marker(mlflow_name: str, version: int) -> str:
    return f"mlflow:{mlflow_name}/{version}"


def plan_versions(mlflow_name: str, versions: Sequence[SourceVersion], existing: Mapping[int, Existing],
                  champion_alias: str) -> list[Step]:
    """Per MLflow version: copy it (new here), ask for a higher stage (imported earlier, since
    promoted over there), or nothing. Stages going down over there are not followed: a re-run
    picks up what is new, it does not undo what happened here since."""
    targets = target_stages([v for v in versions if v.ready], champion_alias)
    steps = []
    for source in sorted(versions, key=lambda v: v.version):
        number = source.version
        if not source.ready:
            steps.append(Step(number, False, None, "skipped: not READY in MLflow (no artifact to copy)"))
            continue
        target = targets[number]
        here = existing.get(number)
        if here is None:
            steps.append(Step(number, True, target, f"copied, then {target}"))
        elif here.imported_from != import_marker(mlflow_name, number):
            steps.append(Step(number, False, None, f"skipped: v{number} already exists here and was not imported "
                                                   "from this MLflow version"))
        elif here.status in ("rejected", "quarantined"):
            steps.append(Step(number, False, None, f"already here, {here.status}: never staged or crowned"))
        elif _STAGE_ORDER.get(target, 0) > _STAGE_ORDER.get(here.stage, 0):
            steps.append(Step(number, False, target, f"already here in {here.stage}, now {target}"))
        else:
            steps.append(Step(number, False, None, f"already here ({here.stage})"))
    # Crowning last: a new champion supersedes the old only once the rest is asked for.
    return sorted(steps, key=lambda s: (s.request == "production", s.version))
