"""A local directory artifact's files, as ingest (file:// URIs) and the SDK (uploads) read them.

Only regular files are taken. A symlink may point at a file inside the directory (it is read as
that file); a symlink out of it, a symlinked directory (a loop, or a way out), a device, FIFO or
socket (a FIFO would block the reader) refuse the whole directory. Listing stops one file past
`max_files`, so a huge tree is never walked whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.manifest import path_problem


class DirectoryRefused(ValueError):
    """The directory cannot be an artifact; `code` says why (a model.rejected reason code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LocalFile:
    path: str         # relative to the directory, '/'-separated
    size_bytes: int
    real: Path        # where to read it (a symlink resolved)


def walk(root: Path, max_files: int) -> list[LocalFile]:
    """The directory's files (at most max_files + 1 of them), each relative path checked."""
    root = Path(os.path.realpath(root))
    found: list[LocalFile] = []

    def unreadable(error: OSError) -> None:
        raise DirectoryRefused("artifact_unreadable", f"{error.filename}: {error.strerror}")

    for folder, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(folder)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                relative = (here / name).relative_to(root).as_posix()
                code = "invalid_path" if _inside(here / name, root) else "symlink_escape"
                raise DirectoryRefused(code, f"{relative}: a symlinked directory")
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            relative = path.relative_to(root).as_posix()
            problem = path_problem(relative)
            if problem:
                raise DirectoryRefused("path_traversal" if ".." in relative.split("/") else "invalid_path", problem)
            if path.is_symlink() and not _inside(path, root):
                raise DirectoryRefused("symlink_escape", f"{relative}: a symlink to a file outside the directory")
            if not path.is_file():
                raise DirectoryRefused("invalid_path", f"{relative}: not a regular file")
            found.append(LocalFile(relative, path.stat().st_size, Path(os.path.realpath(path))))
            if len(found) > max_files:
                return found
    return found


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)
