"""Which `file://` artifacts the registry reads in place: the rule ingest and the API share.

A `file://` URI (or, for the API, the plain absolute path MLflow's local stores hand out) names
a file or a directory model on a file system the registry's services mount. It is taken only
from under one of MODELREG_ARTIFACT_ROOTS, judged by its real path: a `..` component is
refused outright, and a symlink (the path's own or a parent's) that leads out of every root is
refused as an escape. What is found is re-checked by ingest when it copies the bytes, and the
digest the registration announced must match then, so a file swapped in between is rejected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from shared.manifest import is_directory_uri


class LocalSourceRefused(ValueError):
    """The `file://` artifact cannot be read; `code` is a model.rejected reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def roots_text(roots: Sequence[Path]) -> str:
    """The allowed roots as a person reads them in an error message."""
    return ", ".join(str(root) for root in roots) if roots else "none (MODELREG_ARTIFACT_ROOTS is not set)"


def local_artifact_path(uri: str, roots: Sequence[Path]) -> Path:
    """The real path of an existing file or directory a `file://` URI names inside `roots`
    (themselves resolved), or LocalSourceRefused saying why not."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise LocalSourceRefused("unsupported_scheme", f"{uri!r} is not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise LocalSourceRefused("invalid_uri", f"{uri!r} names a remote host")
    raw = unquote(parts.path)
    if ".." in Path(raw).parts:
        raise LocalSourceRefused("path_traversal", f"{uri!r} contains '..'")
    if not roots:
        raise LocalSourceRefused("path_not_allowed",
                                 "file:// artifacts are disabled: no MODELREG_ARTIFACT_ROOTS configured")
    resolved = Path(os.path.realpath(raw))
    if not any(resolved.is_relative_to(root) for root in roots):
        code = "symlink_escape" if Path(raw).is_symlink() or resolved != Path(raw) else "path_not_allowed"
        raise LocalSourceRefused(code, f"{uri!r} is not under an allowed artifact directory")
    if resolved.is_dir():  # a directory artifact, with or without the trailing '/'
        return resolved
    if is_directory_uri(raw) or not resolved.is_file():
        raise LocalSourceRefused("artifact_missing", f"{uri!r} does not exist or is not a regular file")
    return resolved


def file_uri(path: Path) -> str:
    """The `file://` URI of a real path; a directory's ends in '/' (how directory artifacts are
    named, shared.manifest)."""
    return "file://" + quote(str(path)) + ("/" if path.is_dir() else "")
