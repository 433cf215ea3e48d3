"""Streams the scanner reads through: what a layer starts with (magic numbers), the codecs
that open compressed layers, the budget every expanded byte is charged to, and small adapters
between readers and the libraries that open archives and codecs."""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import IO, BinaryIO

from .reader import CHUNK, Invalid, Limit, Reader, Stream

try:  # optional codecs: without them such a stream is an unknown container (refused when strict)
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover - installed with the service
    lz4_frame = None
zstandard: ModuleType | None
try:
    import zstandard as _zstandard
    zstandard = _zstandard
except ImportError:  # pragma: no cover - installed with the service
    zstandard = None

GiB = 1 << 30
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
NPY_MAGIC = b"\x93NUMPY"
# What zipfile raises on a damaged or unsupported archive (encrypted members, unknown versions).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError,
               EOFError, ValueError, KeyError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Limits:
    """How far the scanner follows a file before refusing it."""

    expansion_ratio: int = 200            # expanded bytes per stored byte ...
    min_expanded_bytes: int = 1 * GiB     # ... but at least this much ...
    max_expanded_bytes: int = 64 * GiB    # ... and never more than this
    max_seconds: float = 900.0
    max_depth: int = 4                    # compression layers and containers, nested
    max_members: int = 100_000            # archive members


class Budget:
    def __init__(self, limits: Limits, stored_bytes: int | None) -> None:
        allowed = limits.min_expanded_bytes
        if stored_bytes is not None:
            allowed = max(allowed, stored_bytes * limits.expansion_ratio)
        self.allowed = min(allowed, limits.max_expanded_bytes)
        self.used = 0
        self.deadline = time.monotonic() + limits.max_seconds
        self.limits = limits

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.allowed:
            raise Limit(f"expands past {self.allowed} bytes (a decompression bomb?)")
        if time.monotonic() >= self.deadline:
            raise Limit(f"scan took longer than {self.limits.max_seconds:g} s")


class Expanded:
    """A decompressed (or extracted) stream whose every byte is charged to the budget; codec
    errors become `Invalid` so that a corrupt stream is a finding, not a crash."""

    def __init__(self, inner: Stream, budget: Budget, kind: str) -> None:
        self.inner, self.budget, self.kind = inner, budget, kind

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.inner.read(CHUNK if n is None or n < 0 else n)
        except (Limit, Invalid):
            raise
        except Exception as exc:  # each codec raises its own types (zlib.error, LZMAError, ...)
            raise Invalid(f"corrupt {self.kind}: {exc or type(exc).__name__}") from None
        self.budget.spend(len(data))
        return data

    def seekable(self) -> bool:
        return False


class Timed:
    """The artifact file itself: not charged to the size budget, but held to the time budget."""

    def __init__(self, inner: BinaryIO, budget: Budget) -> None:
        self.inner, self.budget = inner, budget

    def read(self, n: int = -1) -> bytes:
        self.budget.spend(0)
        return self.inner.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def seekable(self) -> bool:
        return self.inner.seekable()


class ZlibReader:
    """A zlib stream as joblib writes it (`compress='zlib'`), read with bounded output; like
    joblib's reader, a new stream may follow the end of one."""

    def __init__(self, raw: Stream) -> None:
        self.raw = raw
        self.dec = zlib.decompressobj()
        self.started = False

    def read(self, n: int) -> bytes:
        while True:
            if self.dec.eof:
                rest = self.dec.unused_data or self.raw.read(CHUNK)
                if not rest:
                    return b""
                self.dec = zlib.decompressobj()
                data = rest
            else:
                data = self.dec.unconsumed_tail or self.raw.read(CHUNK)
                if not data:
                    raise EOFError("compressed stream ended before the end-of-stream marker")
            out = self.dec.decompress(data, n)
            if out:
                return out


def codec_of(head: bytes) -> tuple[str, Callable[[Stream], Stream]] | None:
    """The compression a stream starts with, and how to open it."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip stream", lambda f: gzip.GzipFile(fileobj=f, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz stream", lambda f: lzma.LZMAFile(f, format=lzma.FORMAT_XZ)
    if head.startswith(b"]\x00\x00"):  # joblib's compress='lzma' (the .lzma "alone" format)
        return "lzma stream", lambda f: lzma.LZMAFile(f, format=lzma.FORMAT_ALONE)
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bz2 stream", lambda f: bz2.BZ2File(f)
    if head[:1] == b"\x78" and len(head) >= 2 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib stream", ZlibReader
    if head.startswith(b"\x04\x22\x4d\x18"):
        if lz4_frame is None:
            return "lz4 stream", missing_codec("lz4")
        return "lz4 stream", lambda f: lz4_frame.LZ4FrameFile(f, mode="rb")
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        if zstandard is None:
            return "zstd stream", missing_codec("zstandard")
        zstd = zstandard
        return "zstd stream", lambda f: zstd.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return None


def missing_codec(module: str) -> Callable[[Stream], Stream]:
    def fail(_f: Stream) -> Stream:
        raise Invalid(f"the scanner cannot decompress it (python module {module} missing)")
    return fail


def other_format(head: bytes) -> str | None:
    """Model formats that are not pickles, even when their first byte is a pickle opcode."""
    if head.startswith(b"GGUF"):
        return "GGUF"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "HDF5"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    return None


def is_tar(head: bytes) -> bool:
    """A POSIX/GNU tar (magic at 257), or an old V7 one, which has no magic: its header's
    checksum is what tarfile (and so torch.load's legacy loader) goes by."""
    if head[257:262] == b"ustar":
        return True
    if len(head) < 512 or not head[0]:
        return False
    field = head[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    signed = unsigned - sum(256 for b in head[:148] + head[156:512] if b > 127)
    return stored in (unsigned, signed)


def zip_with_prefix(stream: IO[bytes]) -> bool:
    try:
        return zipfile.is_zipfile(stream)
    except ZIP_ERRORS:
        return False


def describe(head: bytes) -> str:
    return head[:8].hex(" ") if head else "empty"


class Rest:
    """What a Reader has not consumed yet: its buffer, then the rest of its stream."""

    def __init__(self, r: Reader) -> None:
        self.r = r

    def read(self, n: int = -1) -> bytes:
        r = self.r
        if n is None or n < 0:
            n = CHUNK
        if r._pos >= len(r._buf) and r._fill(1) == 0:
            return b""
        avail = len(r._buf) - r._pos
        take = min(n, avail)
        data = r._buf[r._pos:r._pos + take]
        r._pos += take
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class Prefixed:
    """Bytes already read, then the rest of a stream."""

    def __init__(self, first: bytes, rest: Stream) -> None:
        self.first, self.rest = first, rest

    def read(self, n: int = -1) -> bytes:
        if self.first:
            if n is None or n < 0 or n >= len(self.first):
                data, self.first = self.first, b""
                return data
            data, self.first = self.first[:n], self.first[n:]
            return data
        return self.rest.read(n)

    def seekable(self) -> bool:
        return False
