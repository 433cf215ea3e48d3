"""What a scan found, where, and how it reads in a rejection reason.

Every finding carries the place it was found: the artifact's label, then each decompression
layer and container member on the way ("model.joblib (zlib stream)", "model.tar > x/y.pkl").
"""

from __future__ import annotations

import _compat_pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .allowlist import AllowList
from .reader import Reader

_MAX_ENTRIES = 10_000    # distinct imports / findings recorded
_MAX_NAME_REPORT = 512   # longer "module.name" strings are truncated in the report


def printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _identifier_path(text: str) -> bool:
    return bool(text) and all(p.isidentifier() for p in text.split("."))


@dataclass(frozen=True)
class Finding:
    text: str    # "disallowed import posix.system", "not a valid pickle: truncated at offset 9"
    where: str   # "model.joblib (zlib stream)"

    def __str__(self) -> str:
        return f"{self.text} in {self.where}" if self.where else self.text


@dataclass(frozen=True)
class ArtifactScan:
    """The verdict on one file: `examined` says whether a pickle or container was looked into."""

    examined: bool
    imports: tuple[str, ...]       # every global referenced, "module.name", sorted, unique
    findings: tuple[Finding, ...]  # each reason to refuse the file, in the order found

    @property
    def safe(self) -> bool:
        return not self.findings

    @property
    def disallowed(self) -> tuple[str, ...]:
        """The refused imports, sorted."""
        prefix = "disallowed import "
        return tuple(sorted({f.text[len(prefix):] for f in self.findings if f.text.startswith(prefix)}))

    def detail(self) -> str:
        if not self.examined:
            return "no pickle or container found"
        if not self.findings:
            n = len(self.imports)
            return "no imports" if n == 0 else f"{n} import{'' if n == 1 else 's'}, all allowed"
        shown = [str(f) for f in self.findings[:12]]
        more = len(self.findings) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


class Collector:
    """Gathers imports and findings while the layers of one file are walked."""

    def __init__(self, allowed: AllowList, where: str) -> None:
        self.allowed = allowed
        self.where = where
        self.imports: set[str] = set()
        self.findings: dict[Finding, None] = {}
        self.evidence = False   # something that could really import (tells a pickle from noise)
        self._verdicts: dict[str, bool] = {}
        # Layout hooks the pickle walker calls (joblib arrays, legacy torch storages).
        self.on_build: Callable[[Any, Reader], None] | None = None
        self.on_persistent_id: Callable[[Any], None] | None = None

    def child(self, where: str | None = None) -> Collector:
        """A collector for a trial parse: merged into this one only if it proves to matter."""
        other = Collector(self.allowed, self.where if where is None else where)
        other._verdicts = self._verdicts
        return other

    def global_ref(self, module: str, name: str, proto: int) -> str:
        if proto < 3:  # what Unpickler.find_class does with fix_imports (the default)
            mapped = _compat_pickle.NAME_MAPPING.get((module, name))
            if mapped:
                module, name = mapped
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if _identifier_path(module) and _identifier_path(name):
            self.evidence = True
        full = printable(f"{module}.{name}")
        allowed = self._verdicts.get(full)
        if allowed is None:
            if len(full) > _MAX_NAME_REPORT:
                full = full[:_MAX_NAME_REPORT] + "..."
                allowed = False
            else:
                allowed = self.allowed.permits(module, name)
                if len(self._verdicts) < _MAX_ENTRIES:
                    self._verdicts[full] = allowed
        if len(self.imports) < _MAX_ENTRIES:
            self.imports.add(full)
        if not allowed:
            self.finding(f"disallowed import {full}")
        return full

    def finding(self, text: str, evidence: bool = False, where: str | None = None) -> None:
        self.evidence = self.evidence or evidence
        if len(self.findings) >= _MAX_ENTRIES:
            return
        self.findings[Finding(text, self.where if where is None else where)] = None

    def merge(self, other: Collector) -> None:
        self.evidence = self.evidence or other.evidence
        for item in other.imports:
            if len(self.imports) < _MAX_ENTRIES:
                self.imports.add(item)
        for f in other.findings:
            self.finding(f.text, where=f.where)

    def result(self, examined: bool) -> ArtifactScan:
        return ArtifactScan(examined or bool(self.findings), tuple(sorted(self.imports)),
                            tuple(self.findings))
