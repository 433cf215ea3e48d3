"""How to copy an S3 object server-side, decided without I/O.

S3's CopyObject takes objects up to 5 GiB; a bigger one is copied as a multipart upload whose
parts are UploadPartCopy of byte ranges of the source (every part but the last at least
5 MiB, at most 10,000 parts).
"""

from __future__ import annotations

MIB = 1024 * 1024
GIB = 1024 * MIB
MAX_SINGLE_COPY = 5 * GIB  # S3's limit for one CopyObject
MIN_PART = 5 * MIB
MAX_PART = 5 * GIB
MAX_PARTS = 10_000
DEFAULT_COPY_PART = 512 * MIB


def copy_ranges(size: int, threshold: int = MAX_SINGLE_COPY,
                part_size: int = DEFAULT_COPY_PART) -> list[tuple[int, int]] | None:
    """None when one CopyObject will do (`size` at most `threshold`); else the inclusive byte
    ranges (first, last) of the parts, in order, covering the object exactly once. The part
    size is raised where needed to stay within 10,000 parts and kept within S3's bounds."""
    if size < 0:
        raise ValueError(f"an object cannot have {size} bytes")
    if not 0 < threshold <= MAX_SINGLE_COPY:
        raise ValueError(f"a single copy takes 1 byte to 5 GiB; {threshold} is not a threshold")
    if size <= threshold:
        return None
    part = min(MAX_PART, max(MIN_PART, part_size, -(-size // MAX_PARTS)))
    return [(start, min(start + part, size) - 1) for start in range(0, size, part)]
