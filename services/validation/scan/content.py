"""Content sniffing: what a file really holds, whatever format it declares, layer by layer.

Every file is sniffed. Compressed streams (gzip, zlib, bz2, xz/lzma, lz4, zstd) are decompressed
as a stream and sniffed again; tar and zip members are opened and sniffed; .npy arrays with an
object dtype carry a pickle; pickles are walked opcode by opcode (joblib arrays and legacy torch
storages included). Nesting stops at a fixed depth, and every expanded byte counts against a
budget of size and time, so a decompression bomb is refused rather than followed.

Two modes. STRICT (the file, or a member, is declared a pickle: `joblib`, `pt`, `x.pkl`, ...):
anything that does not parse, positively, as a pickle or a container the scanner knows is a
finding. PROBE (anything else): a layer that does not look like a pickle is not one; one that
does is walked, and reported if it imports anything or is plainly a pickle (it starts with the
PROTO opcode), so a polyglot or a renamed pickle cannot pass as data.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import json
import lzma
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from .findings import Collector, printable
from .formats import check_gguf, check_hdf5_keras, check_keras_config, check_onnx, check_safetensors
from .layouts import TORCH_LEGACY_MAGIC, TORCH_TAR_MEMBERS, JoblibArrays, scan_torch_legacy, scan_torch_tar_member
from .pickle_ops import MAX_ARG_IN_MEMORY, START_OPS, walk_pickle
from .reader import CHUNK, Invalid, Limit, Reader

try:  # optional codecs: without them such a stream is an unknown container (refused when strict)
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover - installed with the service
    lz4_frame = None
try:
    import zstandard
except ImportError:  # pragma: no cover - installed with the service
    zstandard = None

GiB = 1 << 30

# Declared formats that are pickles (or pickles in a container) and so are parsed strictly.
PICKLE_FORMATS = frozenset({"pickle", "pkl", "joblib", "pt", "pth", "ckpt", "torch", "dill", "cloudpickle"})
# Member names parsed strictly inside an archive (what torch.load / joblib.load / pickle.load
# open), and names that are probed as pickles even when they do not look like one.
_STRICT_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".dill")

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_NPY_MAGIC = b"\x93NUMPY"
HEAD_BYTES = 512  # enough to recognise every format here (tar's magic is at 257)
_MAX_KERAS_CONFIG = 64 << 20
# Declared formats whose structure is checked even when nothing in them looks like a pickle.
CHECKED_FORMATS = frozenset({"onnx", "safetensors", "gguf", "keras", "h5", "hdf5"})
# What zipfile raises on a damaged or unsupported archive (encrypted members, unknown versions).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError,
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


class _Budget:
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


class _Expanded:
    """A decompressed (or extracted) stream whose every byte is charged to the budget; codec
    errors become `Invalid` so that a corrupt stream is a finding, not a crash."""

    def __init__(self, inner: BinaryIO, budget: _Budget, kind: str) -> None:
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


class _Timed:
    """The artifact file itself: not charged to the size budget, but held to the time budget."""

    def __init__(self, inner: BinaryIO, budget: _Budget) -> None:
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


class _ZlibReader:
    """A zlib stream as joblib writes it (`compress='zlib'`), read with bounded output; like
    joblib's reader, a new stream may follow the end of one."""

    def __init__(self, raw: BinaryIO) -> None:
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


def _codec(head: bytes) -> tuple[str, Callable[[BinaryIO], BinaryIO]] | None:
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
        return "zlib stream", _ZlibReader
    if head.startswith(b"\x04\x22\x4d\x18"):
        if lz4_frame is None:
            return "lz4 stream", _missing("lz4")
        return "lz4 stream", lambda f: lz4_frame.LZ4FrameFile(f, mode="rb")
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        if zstandard is None:
            return "zstd stream", _missing("zstandard")
        return "zstd stream", lambda f: zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return None


def _missing(module: str) -> Callable[[BinaryIO], BinaryIO]:
    def fail(_f: BinaryIO) -> BinaryIO:
        raise Invalid(f"the scanner cannot decompress it (python module {module} missing)")
    return fail


def _other_format(head: bytes) -> str | None:
    """Model formats that are not pickles, even when their first byte is a pickle opcode."""
    if head.startswith(b"GGUF"):
        return "GGUF"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "HDF5"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    return None


def _is_tar(head: bytes) -> bool:
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


def _zip_with_prefix(stream: BinaryIO) -> bool:
    try:
        return zipfile.is_zipfile(stream)
    except _ZIP_ERRORS:
        return False


def _describe(head: bytes) -> str:
    return head[:8].hex(" ") if head else "empty"


class _Scanner:
    def __init__(self, col: Collector, budget: _Budget) -> None:
        self.root = col
        self.budget = budget
        self.members = 0

    # --- one layer ---------------------------------------------------------------------------

    def layer(self, stream: BinaryIO, where: str, strict: bool, depth: int, seekable: bool,
              fmt: str | None = None, siblings: frozenset[str] | None = None) -> bool:
        """Sniff and scan one stream; findings go to the root collector. Returns whether a
        pickle, a container or a model format was examined. `fmt`: the declared format (or the
        member's suffix); `siblings`: the artifact's other files, for ONNX external data."""
        start = stream.tell() if seekable else None
        r = Reader(stream, seekable=seekable)
        try:
            head = r.peek(HEAD_BYTES)
        except Invalid as exc:
            self.root.finding(f"cannot read: {exc}", where=where)
            return True
        if not head:
            if strict:
                self.root.finding("empty, not a pickle", where=where)
            return strict
        if head[:4] in _ZIP_MAGICS or _is_tar(head):
            if depth >= self.budget.limits.max_depth:
                self.root.finding(f"containers nested deeper than {self.budget.limits.max_depth}", where=where)
                return True
            if head[:4] in _ZIP_MAGICS:
                self._zip(r, stream, seekable, where, strict, depth + 1)
            else:
                self._tar(r, where, strict, depth + 1)
            return True
        codec = _codec(head)
        if codec is not None:
            if depth >= self.budget.limits.max_depth:
                self.root.finding(f"compressed streams nested deeper than {self.budget.limits.max_depth}",
                                  where=where)
                return True
            return self._decompress(r, codec, where, strict, depth + 1)
        if head.startswith(_NPY_MAGIC):
            return self._npy(r, where)
        other = _other_format(head)
        if other is not None and strict:
            self.root.finding(f"declared a pickle but holds {other}", where=where)
            return True
        if other is not None or fmt == "onnx":
            return self._model_format(stream, r, start, where, other or "onnx", siblings)
        if head[0] in START_OPS:
            plainly_pickle = head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5
            if self._pickle(r, where, strict=strict or plainly_pickle):
                return True  # (else a probe found no pickle: the checks below still apply)
        if start is not None and _zip_with_prefix(stream):
            # zipfile finds an archive behind prepended bytes; Keras and others load it so.
            stream.seek(start)
            self._zip_file(stream, f"{where} (zip after {_describe(head)}...)", strict, depth + 1)
            return True
        if fmt in CHECKED_FORMATS:
            self.root.finding(f"declared {fmt} but is not a {fmt} file (first bytes {_describe(head)})",
                              where=where)
            return True
        if strict:
            self.root.finding(f"declared a pickle but is neither a pickle nor a container the scanner knows "
                              f"(first bytes {_describe(head)})", where=where)
            return True
        return False

    # --- other model formats -----------------------------------------------------------------

    def _model_format(self, stream: BinaryIO, r: Reader, start: int | None, where: str, kind: str,
                      siblings: frozenset[str] | None) -> bool:
        if start is not None and kind != "onnx":
            # Read as a pickle too: a polyglot must not pass as "not a pickle". (A stream read
            # once cannot be read twice; a well-formed safetensors or GGUF file cannot also be a
            # pickle that imports anything: their framing bytes are not opcodes.)
            self._pickle(r, where, strict=False)
            stream.seek(start)
            r = Reader(stream, seekable=True)
        if kind == "safetensors":
            findings = check_safetensors(r)
        elif kind == "GGUF":
            findings = check_gguf(r)
        elif kind == "HDF5":
            findings = check_hdf5_keras(r)
        else:
            findings = check_onnx(r, siblings)
        for text in findings:
            self.root.finding(text, where=where)
        return True

    # --- pickles -----------------------------------------------------------------------------

    def _pickle(self, r: Reader, where: str, strict: bool) -> bool:
        """Walk pickle after pickle to the end of the stream (a pickle appended after a valid one
        is walked too); when strict, a stream that is not entirely pickles is refused."""
        col = self.root.child(where)
        col.on_build = JoblibArrays(col)
        index = 1
        try:
            value = walk_pickle(r, col)
            if value.__class__ is int and value == TORCH_LEGACY_MAGIC:
                scan_torch_legacy(r, col)
                if not r.at_eof():  # torch.load stops here, but another loader may not
                    col.finding("data appended after the storages of a legacy torch file")
            while not r.at_eof():
                index += 1
                walk_pickle(r, col)
        except Invalid as exc:
            if not strict and not col.evidence:
                return False  # never a pickle: nothing it holds could be imported
            context = f" (pickle #{index} in the stream)" if index > 1 else ""
            col.finding(f"not a valid pickle: {exc}{context}")
        except Limit as exc:
            col.finding(f"scan limit exceeded: {exc}")
        self.root.merge(col)
        return True

    def _npy(self, r: Reader, where: str) -> bool:
        """A .npy array: only an object dtype carries a pickle (after the header)."""
        try:
            pre = r.read(8)
            major = pre[6]
            if major == 1:
                size, encoding = int.from_bytes(r.read(2), "little"), "latin-1"
            elif major in (2, 3):
                size, encoding = int.from_bytes(r.read(4), "little"), ("latin-1" if major == 2 else "utf-8")
            else:
                self.root.finding(f"npy version {major} the scanner does not know", where=where)
                return True
            if size > MAX_ARG_IN_MEMORY:
                self.root.finding("npy header too large to scan", where=where)
                return True
            header = ast.literal_eval(r.read(size).decode(encoding))
        except (Invalid, ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
            self.root.finding(f"not a valid npy header: {exc}", where=where)
            return True
        if not isinstance(header, dict) or "descr" not in header:
            self.root.finding("not a valid npy header: no descr", where=where)
            return True
        if _descr_has_object(header["descr"]):
            return self._pickle(r, f"{where} (npy object payload)", strict=True)
        return True

    # --- compression -------------------------------------------------------------------------

    def _decompress(self, r: Reader, codec: tuple[str, Callable[[BinaryIO], BinaryIO]], where: str,
                    strict: bool, depth: int) -> bool:
        kind, opener = codec
        inner_where = f"{where} ({kind})"
        try:
            expanded = _Expanded(opener(_Rest(r)), self.budget, kind)
            first = expanded.read(HEAD_BYTES)
        except Invalid as exc:
            if not strict and kind == "zlib stream":
                return False  # two bytes are a weak signature: probing, it simply was not zlib
            self.root.finding(str(exc), where=where)
            return True
        except Limit as exc:
            self.root.finding(f"scan limit exceeded: {exc}", where=where)
            return True
        except Exception as exc:  # the codec refused the header
            self.root.finding(f"corrupt {kind}: {exc}", where=where)
            return True
        try:
            self.layer(_Prefixed(first, expanded), inner_where, strict, depth, seekable=False)
            # Whatever the inner layer did not read still has to decompress cleanly: a loader
            # reading the whole stream would meet the same error.
            while expanded.read(CHUNK):
                pass
        except Invalid as exc:
            self.root.finding(str(exc), where=inner_where)
        except Limit as exc:
            self.root.finding(f"scan limit exceeded: {exc}", where=inner_where)
        return True

    # --- archives ----------------------------------------------------------------------------

    def _member_ok(self, name: str, where: str) -> bool:
        self.members += 1
        if self.members > self.budget.limits.max_members:
            raise Limit(f"more than {self.budget.limits.max_members} archive members")
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
            self.root.finding(f"archive member with an unsafe path {printable(name)!r}", where=where)
            return False
        return True

    def _member(self, stream: BinaryIO, name: str, where: str, depth: int,
                names: frozenset[str] = frozenset()) -> bool:
        lower = name.lower()
        strict = lower.endswith(_STRICT_SUFFIXES)
        fmt = "onnx" if lower.endswith(".onnx") else None
        folder = PurePosixPath(name).parent
        siblings = frozenset(str(PurePosixPath(n).relative_to(folder)) for n in names
                             if n != name and PurePosixPath(n).is_relative_to(folder))
        return self.layer(stream, f"{where} > {printable(name)}", strict, depth, seekable=False,
                          fmt=fmt, siblings=siblings)

    def _zip(self, r: Reader, stream: BinaryIO, seekable: bool, where: str, strict: bool, depth: int) -> None:
        if seekable:
            stream.seek(stream.tell() - len(r.unread_buffer()))
            self._zip_file(stream, where, strict, depth)
            return
        with tempfile.TemporaryFile(prefix="modelreg-scan-") as spool:  # zipfile needs to seek
            buffered = r.unread_buffer()
            spool.write(buffered)
            self.budget.spend(len(buffered))
            while chunk := stream.read(CHUNK):
                spool.write(chunk)
                self.budget.spend(len(chunk))
            spool.seek(0)
            self._zip_file(spool, where, strict, depth)

    def _zip_file(self, fileobj: BinaryIO, where: str, strict: bool, depth: int) -> None:
        try:
            archive = zipfile.ZipFile(fileobj)
        except _ZIP_ERRORS as exc:
            self.root.finding(f"not a valid zip archive: {exc}", where=where)
            return
        with archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            declared = sum(i.file_size for i in infos)
            if declared > self.budget.allowed - self.budget.used:
                self.root.finding(f"zip members expand to {declared} bytes, past the scan budget "
                                  f"(a zip bomb?)", where=where)
                return
            examined = False
            names = frozenset(i.filename for i in infos)
            if "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names):
                examined = self._keras(archive, where)
            for info in infos:
                if not self._member_ok(info.filename, where):
                    continue
                try:
                    with archive.open(info) as member:
                        examined |= self._member(_Expanded(member, self.budget, "zip member"),
                                                 info.filename, where, depth, names)
                except _ZIP_ERRORS as exc:
                    self.root.finding(f"cannot read zip member {printable(info.filename)!r}: {exc}", where=where)
            if strict and not examined:
                self.root.finding("declared a pickle but the zip archive holds none", where=where)

    def _keras(self, archive: zipfile.ZipFile, where: str) -> bool:
        """A .keras archive: its config.json names every layer and object the model builds."""
        info = archive.getinfo("config.json")
        if info.file_size > _MAX_KERAS_CONFIG:
            self.root.finding(f"Keras config.json of {info.file_size} bytes is too large to check", where=where)
            return True
        try:
            config = json.loads(archive.read(info))
        except _ZIP_ERRORS as exc:
            self.root.finding(f"Keras config.json is not readable JSON: {exc}", where=where)
            return True
        for text in check_keras_config(config, self.root.allowed.permits):
            self.root.finding(text, where=where)
        return True

    def _tar(self, r: Reader, where: str, strict: bool, depth: int) -> None:
        try:
            archive = tarfile.open(fileobj=_Rest(r), mode="r|")
        except tarfile.TarError as exc:
            self.root.finding(f"not a valid tar archive: {exc}", where=where)
            return
        examined = False
        try:
            with archive:
                for info in archive:
                    if not self._member_ok(info.name, where):
                        continue
                    if info.issym() or info.islnk():
                        target = PurePosixPath(info.linkname)
                        if target.is_absolute() or ".." in target.parts:
                            self.root.finding(f"tar link {printable(info.name)!r} points outside the archive",
                                              where=where)
                        continue
                    if not info.isfile():
                        continue
                    member = archive.extractfile(info)
                    if member is None:
                        continue
                    expanded = _Expanded(member, self.budget, "tar member")
                    if info.name in TORCH_TAR_MEMBERS:
                        self._torch_tar_member(expanded, info.name, where)
                        examined = True
                    else:
                        examined |= self._member(expanded, info.name, where, depth)
        except tarfile.TarError as exc:
            self.root.finding(f"not a valid tar archive: {exc}", where=where)
            return
        if strict and not examined:
            self.root.finding("declared a pickle but the tar archive holds none", where=where)

    def _torch_tar_member(self, stream: BinaryIO, name: str, where: str) -> None:
        col = self.root.child(f"{where} > {name}")
        col.on_build = JoblibArrays(col)
        try:
            scan_torch_tar_member(name, Reader(stream, seekable=False), col)
        except Invalid as exc:
            col.finding(f"not a valid legacy torch member: {exc}")
        except Limit as exc:
            col.finding(f"scan limit exceeded: {exc}")
        self.root.merge(col)


class _Rest:
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


class _Prefixed:
    """Bytes already read, then the rest of a stream."""

    def __init__(self, first: bytes, rest: BinaryIO) -> None:
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


def _descr_has_object(descr) -> bool:
    if isinstance(descr, str):
        return "O" in descr or "object" in descr
    if isinstance(descr, list):
        return any(not isinstance(f, tuple) or len(f) < 2 or _descr_has_object(f[1]) for f in descr)
    if isinstance(descr, tuple) and descr:
        return _descr_has_object(descr[0])
    return True  # unknown layout: look for a pickle rather than assume there is none


def scan_layers(stream: BinaryIO, col: Collector, *, strict: bool, limits: Limits,
                stored_bytes: int | None, seekable: bool, fmt: str | None = None,
                siblings: frozenset[str] | None = None) -> bool:
    """Scan a stream from its current position; findings go to `col`. Returns whether a pickle,
    container or model format was examined."""
    budget = _Budget(limits, stored_bytes)
    scanner = _Scanner(col, budget)
    try:
        return scanner.layer(_Timed(stream, budget), col.where, strict, 0, seekable, fmt, siblings)
    except Limit as exc:
        col.finding(f"scan limit exceeded: {exc}")
        return True
    except Invalid as exc:
        col.finding(f"cannot read: {exc}")
        return True



def might_hold_pickle(head: bytes) -> bool:
    """Whether a stream starting with `head` could be, or hold, a pickle: a compressed stream,
    an archive, a .npy array, or a first byte an unpickler would accept (protocol 0 and 1
    pickles start with plain ASCII opcodes). Decide on at least HEAD_BYTES."""
    if not head:
        return False
    return (head[:4] in _ZIP_MAGICS or _is_tar(head) or _codec(head) is not None
            or head.startswith(_NPY_MAGIC) or head[0] in START_OPS)




def worth_scanning(declared_format: str | None, head: bytes) -> bool:
    """Whether a file needs the scan: a declared pickle or checked format, or first bytes that
    could start a pickle, a container, or a format the scanner checks."""
    fmt = (declared_format or "").lower()
    return (fmt in PICKLE_FORMATS or fmt in CHECKED_FORMATS or might_hold_pickle(head)
            or _other_format(head) is not None)
