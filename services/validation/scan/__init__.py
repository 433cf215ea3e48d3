"""The artifact safety scan: every file sniffed, pickles walked without ever being loaded.

`scan_file` / `scan_stream` return an `ArtifactScan`: whether a pickle or container was
examined, every global it imports, and each finding with the place it was found, e.g.
`disallowed import posix.system in model.joblib (zlib stream)`. A declared pickle-family format
that does not parse is refused (fail closed); see `content` for the layers and `allowlist` for
what a pickle may import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import BinaryIO

from .allowlist import DEFAULT_ALLOWED, allow_list
from .content import HEAD_BYTES, PICKLE_FORMATS, might_hold_pickle, scan_layers, worth_scanning
from .findings import ArtifactScan, Collector, Finding
from .pickle_ops import UNRESOLVED_STACK_GLOBAL
from .streams import Limits

SCANNER_FAILED = "the scanner could not read this file"
# What needs the scan is spooled in memory up to this size, then to a temporary file: a file on
# disk per small artifact cost a tenth of validation's CPU.
SCAN_IN_MEMORY_BYTES = 256 * 1024

__all__ = ["SCANNER_FAILED", "SCAN_IN_MEMORY_BYTES", "DEFAULT_ALLOWED", "HEAD_BYTES", "PICKLE_FORMATS",
           "UNRESOLVED_STACK_GLOBAL",
           "ArtifactScan", "Finding", "Limits", "is_pickle_format", "might_hold_pickle", "worth_scanning",
           "scan_file", "scan_stream"]


def is_pickle_format(declared_format: str | None) -> bool:
    return (declared_format or "").lower() in PICKLE_FORMATS


def scan_stream(stream: BinaryIO, *, declared_format: str | None = None, label: str = "artifact",
                extra_allowed: Iterable[str] = (), limits: Limits = Limits(),
                stored_bytes: int | None = None, siblings: frozenset[str] | None = None) -> ArtifactScan:
    """Scan a binary stream (seekable or not) from its current position, without unpickling.
    `siblings`: the artifact's other files, relative to this one's folder (None: this file is
    the whole artifact); an ONNX model's external data must be one of them."""
    if isinstance(extra_allowed, str):
        extra_allowed = (extra_allowed,)
    col = Collector(allow_list(tuple(extra_allowed)), label)
    try:
        seekable = bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        seekable = False
    try:
        examined = scan_layers(stream, col, strict=is_pickle_format(declared_format), limits=limits,
                               stored_bytes=stored_bytes, seekable=seekable,
                               fmt=(declared_format or "").lower() or None, siblings=siblings)
    except OSError:
        raise  # reading the spooled file failed: a fault of this machine, worth a retry
    except Exception as exc:
        # A file the scanner trips over is refused, not passed and not retried forever.
        col.finding(f"{SCANNER_FAILED}: {type(exc).__name__}: {exc}")
        examined = True
    return col.result(examined)


def scan_file(path: str | os.PathLike[str], *, declared_format: str | None = None, label: str | None = None,
              extra_allowed: Iterable[str] = (), limits: Limits = Limits(),
              siblings: frozenset[str] | None = None) -> ArtifactScan:
    """Scan a file on disk. I/O errors (missing file, permissions) propagate."""
    with open(path, "rb") as f:
        return scan_stream(f, declared_format=declared_format,
                           label=label if label is not None else os.path.basename(path),
                           extra_allowed=extra_allowed, limits=limits,
                           stored_bytes=os.fstat(f.fileno()).st_size, siblings=siblings)
