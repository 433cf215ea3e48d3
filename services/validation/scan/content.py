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
import json
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import IO, Any, BinaryIO, cast

from .findings import Collector, printable
from .formats import check_gguf, check_hdf5_keras, check_keras_config, check_onnx, check_safetensors
from .layouts import TORCH_LEGACY_MAGIC, TORCH_TAR_MEMBERS, JoblibArrays, scan_torch_legacy, scan_torch_tar_member
from .pickle_ops import MAX_ARG_IN_MEMORY, START_OPS, walk_pickle
from .reader import CHUNK, Invalid, Limit, Reader, Stream, as_seekable
from .streams import (
    NPY_MAGIC,
    ZIP_ERRORS,
    ZIP_MAGICS,
    Budget,
    Expanded,
    Limits,
    Prefixed,
    Rest,
    Timed,
    codec_of,
    describe,
    is_tar,
    other_format,
    zip_with_prefix,
)

# Declared formats that are pickles (or pickles in a container) and so are parsed strictly.
PICKLE_FORMATS = frozenset({"pickle", "pkl", "joblib", "pt", "pth", "ckpt", "torch", "dill", "cloudpickle"})
# Member names parsed strictly inside an archive (what torch.load / joblib.load / pickle.load open).
_STRICT_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".dill")

HEAD_BYTES = 512  # enough to recognise every format here (tar's magic is at 257)
_MAX_KERAS_CONFIG = 64 << 20
# Declared formats whose structure is checked even when nothing in them looks like a pickle.
CHECKED_FORMATS = frozenset({"onnx", "safetensors", "gguf", "keras", "h5", "hdf5"})


_MAX_TAR_EXTENDED_HEADER = 1 << 20
_MAX_ZIP_DIRECTORY = 64 << 20
# zipfile's own reader of the end-of-central-directory record, and that record's fields: private
# to zipfile, so typeshed leaves them out.
_zip_end_record: Callable[[IO[bytes]], list[Any] | None] = zipfile._EndRecData  # type: ignore[attr-defined]  # noqa: SLF001
_ECD_SIZE: int = zipfile._ECD_SIZE  # type: ignore[attr-defined]  # noqa: SLF001
_ECD_ENTRIES_TOTAL: int = zipfile._ECD_ENTRIES_TOTAL  # type: ignore[attr-defined]  # noqa: SLF001


def _zip_readable(stream: Stream) -> IO[bytes]:
    """A stream the caller knows seeks (the artifact file), as zipfile takes it."""
    return cast(IO[bytes], stream)  # zipfile only reads, seeks and tells, which such a stream does


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory: refuse a huge one first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)
        if self.type in extended and self.size > _MAX_TAR_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes")
        # tarfile's private per-member hook: typeshed leaves it out
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


class _Scanner:
    def __init__(self, col: Collector, budget: Budget) -> None:
        self.root = col
        self.budget = budget
        self.members = 0

    # --- one layer ---------------------------------------------------------------------------

    def layer(self, stream: Stream, where: str, strict: bool, depth: int, seekable: bool,
              fmt: str | None = None, siblings: frozenset[str] | None = None) -> bool:
        """Sniff and scan one stream; findings go to the root collector. Returns whether a
        pickle, a container or a model format was examined. `fmt`: the declared format (or the
        member's suffix); `siblings`: the artifact's other files, for ONNX external data."""
        start = as_seekable(stream).tell() if seekable else None
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
        if head[:4] in ZIP_MAGICS or is_tar(head):
            if depth >= self.budget.limits.max_depth:
                self.root.finding(f"containers nested deeper than {self.budget.limits.max_depth}", where=where)
                return True
            if head[:4] in ZIP_MAGICS:
                self._zip(r, stream, seekable, where, strict, depth + 1)
            else:
                self._tar(r, where, strict, depth + 1)
            return True
        codec = codec_of(head)
        if codec is not None:
            if depth >= self.budget.limits.max_depth:
                self.root.finding(f"compressed streams nested deeper than {self.budget.limits.max_depth}",
                                  where=where)
                return True
            return self._decompress(r, codec, where, strict, depth + 1)
        if head.startswith(NPY_MAGIC):
            return self._npy(r, where)
        other = other_format(head)
        if other is not None and strict:
            self.root.finding(f"declared a pickle but holds {other}", where=where)
            return True
        if other is not None or fmt == "onnx":
            return self._model_format(stream, r, start, where, other or "onnx", siblings)
        if head[0] in START_OPS:
            plainly_pickle = head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5
            if self._pickle(r, where, strict=strict or plainly_pickle):
                return True  # (else a probe found no pickle: the checks below still apply)
        if start is not None and zip_with_prefix(_zip_readable(stream)):
            # zipfile finds an archive behind prepended bytes; Keras and others load it so.
            as_seekable(stream).seek(start)
            self._zip_file(_zip_readable(stream), f"{where} (zip after {describe(head)}...)", strict, depth + 1)
            return True
        if fmt in CHECKED_FORMATS:
            self.root.finding(f"declared {fmt} but is not a {fmt} file (first bytes {describe(head)})",
                              where=where)
            return True
        if strict:
            self.root.finding(f"declared a pickle but is neither a pickle nor a container the scanner knows "
                              f"(first bytes {describe(head)})", where=where)
            return True
        return False

    # --- other model formats -----------------------------------------------------------------

    def _model_format(self, stream: Stream, r: Reader, start: int | None, where: str, kind: str,
                      siblings: frozenset[str] | None) -> bool:
        if start is not None and kind != "onnx":
            # Read as a pickle too: a polyglot must not pass as "not a pickle". (A stream read
            # once cannot be read twice; a well-formed safetensors or GGUF file cannot also be a
            # pickle that imports anything: their framing bytes are not opcodes.)
            self._pickle(r, where, strict=False)
            as_seekable(stream).seek(start)
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

    def _decompress(self, r: Reader, codec: tuple[str, Callable[[Stream], Stream]], where: str,
                    strict: bool, depth: int) -> bool:
        kind, opener = codec
        inner_where = f"{where} ({kind})"
        try:
            expanded = Expanded(opener(Rest(r)), self.budget, kind)
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
            self.layer(Prefixed(first, expanded), inner_where, strict, depth, seekable=False)
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

    def _member(self, stream: Stream, name: str, where: str, depth: int,
                names: frozenset[str] = frozenset()) -> bool:
        lower = name.lower()
        strict = lower.endswith(_STRICT_SUFFIXES)
        fmt = "onnx" if lower.endswith(".onnx") else None
        folder = PurePosixPath(name).parent
        siblings = frozenset(str(PurePosixPath(n).relative_to(folder)) for n in names
                             if n != name and PurePosixPath(n).is_relative_to(folder))
        return self.layer(stream, f"{where} > {printable(name)}", strict, depth, seekable=False,
                          fmt=fmt, siblings=siblings)

    def _zip(self, r: Reader, stream: Stream, seekable: bool, where: str, strict: bool, depth: int) -> None:
        if seekable:
            seeking = as_seekable(stream)
            seeking.seek(seeking.tell() - len(r.unread_buffer()))
            self._zip_file(_zip_readable(seeking), where, strict, depth)
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

    def _zip_file(self, fileobj: IO[bytes], where: str, strict: bool, depth: int) -> None:
        try:
            # zipfile holds the whole central directory in memory: look at its size first.
            start = fileobj.tell()
            end = _zip_end_record(fileobj)  # the record zipfile itself reads
            fileobj.seek(start)
            if end is not None and (end[_ECD_SIZE] > _MAX_ZIP_DIRECTORY
                                    or end[_ECD_ENTRIES_TOTAL] > self.budget.limits.max_members):
                self.root.finding(f"zip directory of {end[_ECD_ENTRIES_TOTAL]} entries "
                                  f"in {end[_ECD_SIZE]} bytes is too large to read", where=where)
                return
            archive = zipfile.ZipFile(fileobj)
        except ZIP_ERRORS as exc:
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
                        examined |= self._member(Expanded(member, self.budget, "zip member"),
                                                 info.filename, where, depth, names)
                except ZIP_ERRORS as exc:
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
        except ZIP_ERRORS as exc:
            self.root.finding(f"Keras config.json is not readable JSON: {exc}", where=where)
            return True
        for text in check_keras_config(config, self.root.allowed.permits):
            self.root.finding(text, where=where)
        return True

    def _tar(self, r: Reader, where: str, strict: bool, depth: int) -> None:
        try:
            # typeshed asks a fileobj for write, seek and tell too; stream mode ("r|") only reads
            archive = tarfile.open(fileobj=Rest(r), mode="r|", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]
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
                    expanded = Expanded(member, self.budget, "tar member")
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

    def _torch_tar_member(self, stream: Stream, name: str, where: str) -> None:
        col = self.root.child(f"{where} > {name}")
        col.on_build = JoblibArrays(col)
        try:
            scan_torch_tar_member(name, Reader(stream, seekable=False), col)
        except Invalid as exc:
            col.finding(f"not a valid legacy torch member: {exc}")
        except Limit as exc:
            col.finding(f"scan limit exceeded: {exc}")
        self.root.merge(col)


def _descr_has_object(descr: object) -> bool:
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
    budget = Budget(limits, stored_bytes)
    scanner = _Scanner(col, budget)
    try:
        return scanner.layer(Timed(stream, budget), col.where, strict, 0, seekable, fmt, siblings)
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
    return (head[:4] in ZIP_MAGICS or is_tar(head) or codec_of(head) is not None
            or head.startswith(NPY_MAGIC) or head[0] in START_OPS)




def worth_scanning(declared_format: str | None, head: bytes) -> bool:
    """Whether a file needs the scan: a declared pickle or checked format, or first bytes that
    could start a pickle, a container, or a format the scanner checks."""
    fmt = (declared_format or "").lower()
    return (fmt in PICKLE_FORMATS or fmt in CHECKED_FORMATS or might_hold_pickle(head)
            or other_format(head) is not None)
