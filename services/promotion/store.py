"""promotion's row type; its SQL lives in `unit_of_work` (set-based, one batch at a time)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.events import Stage


@dataclass(frozen=True)
class VersionRow:
    """A version as promotion's decisions see it."""

    name: str
    version: int
    stage: Stage
    sha256: str
    artifact_uri: str
    registered_by: str | None
    correlation_id: uuid.UUID | None
    validated: bool
    blocked: str | None
    previous_champion: int | None
