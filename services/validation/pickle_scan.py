"""Safety scan of pickle-based model artifacts, without ever unpickling them.

Unpickling runs code: every global a pickle names (`GLOBAL`, `INST`, `STACK_GLOBAL`) is imported,
and `REDUCE`/`BUILD`/`NEWOBJ`/`OBJ` call what was imported. So this module reads the opcode stream
itself, simulates just enough of the unpickler's stack and memo to know which globals are
referenced, and checks each of them against an allow-list of names that ML pickles legitimately
need and that cannot be turned into code execution.

Memory stays bounded whatever the input: the stream is read in 1 MiB chunks, any length-prefixed
argument larger than 64 KiB is skipped (seeked past, or read and discarded in chunks) and replaced
by a placeholder, runs of placeholders on the simulated stack are run-length encoded, and the
memo keeps only strings, in a compact arena with a fixed budget. Past a budget the scanner forgets
values, and a `STACK_GLOBAL` that needs a forgotten value is reported as unresolved (fail closed).

Containers: a zip archive (PyTorch `.pt`, TorchScript, `.npz`, any zip) has each `*.pkl` /
`*.pickle` member scanned, and each `*.npy` member with an object dtype (which holds a pickle);
a bare `.npy` file with an object dtype likewise. Other formats are not pickles; a file that
merely looks like safetensors / GGUF / HDF5 is still parsed as a pickle, and reported as one
(unsafe) if that parse finds imports, so a polyglot cannot pass as "not a pickle".

Known limitations (all fail closed, i.e. reported unsafe rather than passed):
- joblib dumps interleave raw numpy buffers with opcodes and legacy (pre-zip) `torch.save` files
  append raw storages after their pickles; both are reported as "not a valid pickle".
- The allow-list is about what is *imported*; values handed to allowed callables are only plain
  data unless they are themselves globals, which are checked on their own.
"""

from __future__ import annotations

import _compat_pickle
import ast
import codecs
import fnmatch
import functools
import io
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import zipfile
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["DEFAULT_ALLOWED", "PickleScan", "scan_file", "scan_stream"]

# --------------------------------------------------------------------------------------------
# Allow-list
# --------------------------------------------------------------------------------------------

_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double",
    "complex32", "complex64", "complex128", "cfloat", "cdouble", "chalf",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "short", "int", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)
_NUMPY_SCALAR_TYPES = (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "str_", "bytes_", "object_", "datetime64", "timedelta64", "intc", "uintc", "intp", "uintp",
)

DEFAULT_ALLOWED: tuple[str, ...] = (
    # --- Plain containers and values. Constructing them runs no user code; a callable handed to
    #     one (e.g. a defaultdict's default_factory) is itself a global, checked on its own.
    "collections.OrderedDict",
    "collections.defaultdict",
    "collections.Counter",
    "collections.deque",
    "builtins.set",
    "builtins.frozenset",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.bytearray",
    "builtins.bytes",
    "builtins.complex",
    "builtins.slice",
    "builtins.range",
    "builtins.object",   # object() takes no arguments and does nothing
    "builtins.float",
    "builtins.int",
    "builtins.str",      # a str built at load time can't be an import: STACK_GLOBAL on it is flagged
    "builtins.bool",
    "datetime.datetime",
    "datetime.date",
    "datetime.time",
    "datetime.timedelta",
    "datetime.timezone",
    "decimal.Decimal",
    "fractions.Fraction",
    # --- Helpers the pickle protocol itself emits: they only call cls.__new__ / base.__init__ of
    #     classes that reach them as (checked) globals.
    "copyreg._reconstructor",
    "copyreg.__newobj__",
    "copyreg.__newobj_ex__",
    # --- numpy (protocol <= 2) stores raw bytes as _codecs.encode(latin-1 text, "latin1"); a codec
    #     only transforms data, it cannot import or execute anything.
    "_codecs.encode",
    # --- numpy: array/scalar/dtype reconstruction; they only build arrays from data.
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer",     # protocol-5 arrays (out-of-band / PickleBuffer)
    "numpy._core.numeric._frombuffer",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.*",                      # the DType classes (Float64DType, ...)
    "numpy.ma.core._mareconstruct",
    "numpy.ma.core.MaskedArray",
    "numpy.ma.MaskedArray",
    *(f"numpy.{t}" for t in _NUMPY_SCALAR_TYPES),  # scalar types, e.g. an estimator's dtype=
    # Random generator state: constructors that take a bit-generator name/class and a state dict.
    "numpy.random._pickle.*",
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64",
    "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",  # Cython: cls.__new__ + set state
    # --- torch: the tensor/parameter rebuilders torch.save emits (they build tensors from storages
    #     and plain data; any callable they get, e.g. a hook, is a separately checked global),
    #     storage classes, dtypes, devices, sizes, layouts and quantization schemes.
    #     NOT torch.storage._load_from_bytes: it calls torch.load, i.e. an unrestricted unpickle.
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "torch.Tensor",
    "torch.Size",
    "torch.device",
    "torch.serialization._get_layout",
    "torch.strided",
    "torch.sparse_coo",
    "torch.sparse_csr",
    "torch.per_tensor_affine",
    "torch.per_channel_affine",
    "torch.per_tensor_symmetric",
    "torch.per_channel_symmetric",
    "torch.per_channel_affine_float_qparams",
    "torch.*Storage",                      # torch.FloatStorage, torch.storage.UntypedStorage, ...
    *(f"torch.{d}" for d in _TORCH_DTYPES),
    # --- Classic ML libraries: their estimators/boosters/matrices are classes whose construction
    #     and __setstate__ only restore fitted data. Wildcards are hardened (see _Policy): they never
    #     admit attribute traversal ("sklearn.base.os.system"), dangerous module names, test/IO/
    #     network helpers (sklearn.utils._testing, sklearn.datasets, *.load*/save*/dump*, ...).
    "sklearn.*",
    "scipy.sparse.*",
    "xgboost.*",
    "lightgbm.*",
)

# Wildcard matches are refused when any dotted component is one of these (modules and builtins
# that execute code, spawn processes, touch files/network, or re-enter unpickling) ...
_DENY_COMPONENTS = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "__builtins__",
    "importlib", "runpy", "shutil", "socket", "pty", "ctypes", "pickle", "_pickle", "cPickle",
    "dill", "cloudpickle", "joblib", "_joblib", "marshal", "types", "code", "codeop", "functools",
    "operator", "webbrowser", "multiprocessing", "threading", "signal", "tempfile", "io",
    "pathlib", "glob", "asyncio", "inspect", "urllib", "http", "requests", "eval", "exec",
    "compile", "getattr", "setattr", "delattr", "__import__", "open", "input", "breakpoint",
    "globals", "locals", "vars", "system", "popen", "__globals__", "__dict__", "__class__",
    "__subclasses__", "__getattribute__", "__reduce__", "__reduce_ex__", "__loader__",
    "__spec__", "__code__",
})
# ... or when a module component matches one of these (test helpers run arbitrary scripts,
# dataset helpers download/read/write files, trackers/collectives open sockets) ...
_DENY_MODULE_PARTS = (
    "test", "tests", "testing", "_testing", "test_*", "*_test", "conftest", "externals",
    "_build_utils", "datasets", "_show_versions", "tracker", "collective", "dask", "spark",
    "rabit", "federated", "setup",
)
# ... or when the final name matches one of these (file IO, process/code execution, raw memory).
_DENY_NAMES = (
    "load*", "_load*", "save*", "_save*", "dump*", "_dump*", "fetch*", "open*", "read*",
    "write*", "exec*", "eval*", "spawn*", "popen*", "run*", "_run*", "system", "call",
    "check_call", "check_output", "compile*", "import*", "_import*", "*ctypes*", "c_*", "*cstr*",
    "*pointer*", "*_ptr",
)

_WILDCARD_CHARS = frozenset("*?[")


class _Policy:
    """Exact entries are taken at their word; wildcard entries are hardened (see DEFAULT_ALLOWED).

    The hardening looks only at what the wildcard supplied: the dotted components that start
    after the pattern's literal prefix ("numpy.random._pickle.*" names `_pickle` itself, so that
    is fine, but "sklearn.*" must not reach `sklearn.utils._testing` or `...os.system`)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact = frozenset(p for p in patterns if not _WILDCARD_CHARS & set(p))
        self.wild: list[tuple[re.Pattern[str], int]] = []
        for p in dict.fromkeys(p for p in patterns if _WILDCARD_CHARS & set(p)):
            prefix = min((p.index(c) for c in _WILDCARD_CHARS if c in p))
            self.wild.append((re.compile(fnmatch.translate(p)), prefix))

    def permits(self, module: str, name: str) -> bool:
        full = f"{module}.{name}"
        if full in self.exact:
            return True
        if "." in name:  # protocol 4 qualnames walk attributes: "sklearn.base" + "os.system"
            return False
        parts = full.split(".")
        if not all(p.isidentifier() for p in parts):
            return False
        starts, at = [], 0
        for part in parts:
            starts.append(at)
            at += len(part) + 1
        for regex, prefix in self.wild:
            if regex.match(full) and self._hardened(parts, starts, prefix):
                return True
        return False

    @staticmethod
    def _hardened(parts: list[str], starts: list[int], prefix: int) -> bool:
        free = [i for i, start in enumerate(starts) if start >= prefix]
        if any(parts[i] in _DENY_COMPONENTS for i in free):
            return False
        last = len(parts) - 1
        if any(fnmatch.fnmatchcase(parts[i], d) for i in free if i != last for d in _DENY_MODULE_PARTS):
            return False
        return last not in free or not any(fnmatch.fnmatchcase(parts[last], d) for d in _DENY_NAMES)


@functools.lru_cache(maxsize=32)
def _policy(patterns: tuple[str, ...]) -> _Policy:
    return _Policy(patterns)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------

UNRESOLVED_STACK_GLOBAL = "STACK_GLOBAL with non-constant operands"


@dataclass(frozen=True)
class PickleScan:
    is_pickle: bool
    imports: tuple[str, ...]      # every global referenced, "module.name", sorted, unique
    disallowed: tuple[str, ...]   # imports outside the allow-list plus findings, sorted, unique

    @property
    def safe(self) -> bool:
        return not self.disallowed

    def detail(self) -> str:
        if not self.is_pickle:
            return "not a pickle"
        if not self.disallowed:
            n = len(self.imports)
            return "no imports" if n == 0 else f"{n} import{'' if n == 1 else 's'}, all allowed"
        imported = set(self.imports)
        bad = [d for d in self.disallowed if d in imported]
        other = [d for d in self.disallowed if d not in imported]
        parts = []
        if bad:
            parts.append("disallowed imports: " + _listing(bad, 20))
        if other:
            parts.append(_listing(other, 5, sep="; "))
        return "; ".join(parts)


def _listing(items: list[str], limit: int, sep: str = ", ") -> str:
    text = sep.join(items[:limit])
    return text if len(items) <= limit else f"{text}{sep}and {len(items) - limit} more"


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------

MAX_ARG_IN_MEMORY = 64 * 1024       # longer length-prefixed arguments are skipped, not read
_CHUNK = 1 << 20                    # read size
_MAX_KEPT_STR = 1024                # longer strings can't be module/qualnames: tracked as opaque
_STACK_STR_BUDGET = 16 << 20        # chars (+overhead) of strings held on the simulated stack
_MAX_STACK_ENTRIES = 1_000_000      # run-length-encoded entries of the simulated stack
_MEMO_ARENA_BUDGET = 32 << 20       # bytes of memoized strings kept
_MEMO_MAX_SLOTS = 4 << 20           # dense memo slots with a value (8 bytes each)
_MEMO_MAX_EXTRA = 100_000           # out-of-order memo keys before giving up (fail closed)
_MAX_ENTRIES = 10_000               # distinct imports / findings recorded
_MAX_NAME_REPORT = 512              # longer "module.name" strings are truncated in the report


class _Invalid(Exception):
    """The bytes are not a well-formed pickle."""


class _Limit(Exception):
    """The pickle is beyond what the scanner tracks; reported as unsafe."""


# --------------------------------------------------------------------------------------------
# Chunked reader
# --------------------------------------------------------------------------------------------

class _Reader:
    """Reads a binary stream through a bounded buffer; skips long arguments without holding them."""

    __slots__ = ("_f", "_buf", "_pos", "_base", "_seekable", "_left")

    def __init__(self, f: BinaryIO, seekable: bool | None = None) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._base = 0          # offset (from where scanning began) of _buf[0]
        self._left = None       # bytes in the stream after the buffer, when known
        if seekable is None:
            try:
                seekable = bool(f.seekable())
            except (AttributeError, OSError, ValueError):
                seekable = False
        if seekable:
            try:
                cur = f.tell()
                end = f.seek(0, io.SEEK_END)
                f.seek(cur)
                self._left = max(0, end - cur)
            except (AttributeError, OSError, ValueError):
                seekable = False
        self._seekable = seekable

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _raw(self, n: int) -> bytes:
        data = self._f.read(n) or b""
        if self._left is not None:
            self._left = max(0, self._left - len(data))
        return data

    def _fill(self, n: int) -> int:
        """Make n bytes available from _pos if the stream has them; return how many are."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return avail
        parts = [self._buf[self._pos:]] if avail else []
        self._base += self._pos
        while avail < n:
            chunk = self._raw(max(_CHUNK, n - avail))
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        return avail

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buf[self._pos:self._pos + n]

    def at_eof(self) -> bool:
        return self._fill(1) == 0

    def unread_buffer(self) -> bytes:
        return self._buf[self._pos:]

    def read_byte(self) -> int:
        pos = self._pos
        if pos < len(self._buf):
            self._pos = pos + 1
            return self._buf[pos]
        if self._fill(1) == 0:
            return -1
        self._pos = 1
        return self._buf[0]

    def read(self, n: int) -> bytes:
        if self._fill(n) < n:
            at = self.offset
            self._pos = len(self._buf)
            raise _Invalid(f"truncated at offset {at}: {n} bytes expected")
        pos = self._pos
        self._pos = pos + n
        return self._buf[pos:pos + n]

    def skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return
        n -= avail
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        if self._seekable and self._left is not None:
            if n > self._left:
                self._base += self._left
                self._f.seek(0, io.SEEK_END)
                self._left = 0
                raise _Invalid(f"truncated at offset {self._base}: argument runs past the end")
            self._f.seek(n, io.SEEK_CUR)
            self._left -= n
            self._base += n
            return
        while n:
            chunk = self._raw(min(_CHUNK, n))
            if not chunk:
                raise _Invalid(f"truncated at offset {self._base}: argument runs past the end")
            n -= len(chunk)
            self._base += len(chunk)

    def readline(self, limit: int) -> bytes | None:
        """The next line without its newline; None (line consumed) if it is longer than limit."""
        while True:
            buf, pos = self._buf, self._pos
            i = buf.find(b"\n", pos, pos + limit + 1)
            if i >= 0:
                self._pos = i + 1
                return buf[pos:i]
            avail = len(buf) - pos
            if avail > limit:
                break
            if self._fill(avail + 1) <= avail:
                raise _Invalid(f"truncated at offset {self.offset + avail}: newline expected")
        while True:  # overlong line: discard through the newline
            i = self._buf.find(b"\n", self._pos)
            if i >= 0:
                self._pos = i + 1
                return None
            self._base += len(self._buf)
            self._buf = self._raw(_CHUNK)
            self._pos = 0
            if not self._buf:
                raise _Invalid(f"truncated at offset {self._base}: newline expected")


# --------------------------------------------------------------------------------------------
# Simulated stack and memo
# --------------------------------------------------------------------------------------------

class _Stack:
    """The unpickler's stack (with MARKs) where only strings keep their value.

    Entries: a str (a known string), an int n > 0 (a run of n values of no interest, None when
    popped), an int -n < 0 (a run of n MARKs)."""

    __slots__ = ("e", "cost")

    def __init__(self) -> None:
        self.e: list = []
        self.cost = 0

    def _append(self, item) -> None:
        if len(self.e) >= _MAX_STACK_ENTRIES:
            raise _Limit(f"simulated stack exceeds {_MAX_STACK_ENTRIES} entries")
        self.e.append(item)

    def push_unknown(self) -> None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is int and t > 0:
                e[-1] = t + 1
                return
        self._append(1)

    def push(self, value: str | None) -> None:
        if value is None:
            self.push_unknown()
            return
        cost = len(value) + 64
        if self.cost + cost > _STACK_STR_BUDGET:
            self.push_unknown()
            return
        self._append(value)
        self.cost += cost

    def push_mark(self) -> None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is int and t < 0:
                e[-1] = t - 1
                return
        self._append(-1)

    def pop(self) -> str | None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is str:
                e.pop()
                self.cost -= len(t) + 64
                return t
            if t > 0:
                if t == 1:
                    e.pop()
                else:
                    e[-1] = t - 1
                return None
        raise _Invalid("unpickling stack underflow")

    def top(self) -> str | None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is str:
                return t
            if t > 0:
                return None
        raise _Invalid("unpickling stack underflow")

    def pop_mark(self) -> None:
        e = self.e
        while e:
            t = e.pop()
            if t.__class__ is str:
                self.cost -= len(t) + 64
            elif t < 0:
                if t != -1:
                    e.append(t + 1)
                return
        raise _Invalid("MARK expected but the stack has none")

    def pop_value_or_mark(self) -> None:  # the POP opcode
        e = self.e
        if e and (e[-1].__class__ is str or e[-1] > 0):
            self.pop()
        else:
            self.pop_mark()


class _Memo:
    """The unpickler's memo, keeping only string values, compactly.

    Keys 0..dense-1 all exist (the normal case: picklers use len(memo) as the next key); their
    values live in `vals` (-1: not a string, or not kept), strings in a length-prefixed arena.
    Other keys go to `extra`. If that grows too large the memo is `poisoned`: every GET yields an
    unknown value from then on (fail closed) since MEMOIZE's key is no longer known."""

    __slots__ = ("vals", "arena", "dense", "extra", "poisoned")

    def __init__(self) -> None:
        self.vals = array("q")
        self.arena = bytearray()
        self.dense = 0
        self.extra: dict[int, int] = {}
        self.poisoned = False

    def _store(self, value: str | None) -> int:
        if value is None:
            return -1
        data = value.encode("utf-8", "surrogatepass")
        if len(self.arena) + len(data) + 4 > _MEMO_ARENA_BUDGET:
            return -1
        off = len(self.arena)
        self.arena += len(data).to_bytes(4, "little")
        self.arena += data
        return off

    def _load(self, off: int) -> str | None:
        if off < 0:
            return None
        n = int.from_bytes(self.arena[off:off + 4], "little")
        return self.arena[off + 4:off + 4 + n].decode("utf-8", "surrogatepass")

    def _append(self, off: int) -> None:
        if len(self.vals) == self.dense and self.dense < _MEMO_MAX_SLOTS:
            self.vals.append(off)
        self.dense += 1

    def put(self, idx: int, value: str | None) -> None:
        if self.poisoned:
            return
        off = self._store(value)
        if idx < self.dense:
            if idx < len(self.vals):
                self.vals[idx] = off
        elif idx == self.dense:
            self._append(off)
            extra = self.extra
            while extra and self.dense in extra:
                self._append(extra.pop(self.dense))
        elif idx in self.extra or len(self.extra) < _MEMO_MAX_EXTRA:
            self.extra[idx] = off
        else:
            self.poisoned = True

    def memoize(self, value: str | None) -> None:
        self.put(self.dense + len(self.extra), value)

    def get(self, idx: int) -> str | None:
        if self.poisoned:
            return None
        if idx < self.dense:
            return self._load(self.vals[idx]) if idx < len(self.vals) else None
        if idx in self.extra:
            return self._load(self.extra[idx])
        raise _Invalid(f"memo key {idx} not found")


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------

def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _identifier_path(text: str) -> bool:
    return bool(text) and all(p.isidentifier() for p in text.split("."))


class _Collector:
    def __init__(self, policy: _Policy) -> None:
        self.policy = policy
        self.imports: set[str] = set()
        self.disallowed: set[str] = set()
        self.evidence = False   # something that could really import (for the polyglot check)
        self._verdicts: dict[str, bool] = {}

    def _add(self, target: set[str], item: str) -> None:
        if item in target:
            return
        if len(target) >= _MAX_ENTRIES:
            self.disallowed.add(f"more than {_MAX_ENTRIES} distinct entries; list truncated")
            return
        target.add(item)

    def global_ref(self, module: str, name: str, proto: int) -> None:
        if proto < 3:  # what Unpickler.find_class does with fix_imports (the default)
            mapped = _compat_pickle.NAME_MAPPING.get((module, name))
            if mapped:
                module, name = mapped
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if _identifier_path(module) and _identifier_path(name):
            self.evidence = True
        full = _printable(f"{module}.{name}")
        allowed = self._verdicts.get(full)
        if allowed is None:
            if len(full) > _MAX_NAME_REPORT:
                full = full[:_MAX_NAME_REPORT] + "..."
                allowed = False
            else:
                allowed = self.policy.permits(module, name)
                if len(self._verdicts) < _MAX_ENTRIES:
                    self._verdicts[full] = allowed
        self._add(self.imports, full)
        if not allowed:
            self._add(self.disallowed, full)

    def finding(self, text: str, evidence: bool = False) -> None:
        self.evidence = self.evidence or evidence
        self._add(self.disallowed, text)

    def merge(self, other: _Collector) -> None:
        for item in other.imports:
            self._add(self.imports, item)
        for item in other.disallowed:
            self._add(self.disallowed, item)

    def result(self, is_pickle: bool) -> PickleScan:
        if not is_pickle:
            return PickleScan(False, (), ())
        return PickleScan(True, tuple(sorted(self.imports)), tuple(sorted(self.disallowed)))


# --------------------------------------------------------------------------------------------
# Opcode table (argument layouts and stack effects from pickletools' metadata)
# --------------------------------------------------------------------------------------------

_A_NONE, _A_FIXED, _A_LINE, _A_LINE2, _A_LEN1, _A_LEN4S, _A_LEN4U, _A_LEN8U = range(8)
_LEN_KINDS = {
    pickletools.TAKEN_FROM_ARGUMENT1: _A_LEN1,
    pickletools.TAKEN_FROM_ARGUMENT4: _A_LEN4S,
    pickletools.TAKEN_FROM_ARGUMENT4U: _A_LEN4U,
    pickletools.TAKEN_FROM_ARGUMENT8U: _A_LEN8U,
}

# Opcodes given their own handling in _scan_one; every other one is a generic stack effect.
(_S_GENERIC, _S_STR, _S_BINPUT, _S_BINGET, _S_MEMOIZE, _S_STACK_GLOBAL, _S_GLOBAL, _S_MARK,
 _S_STOP, _S_PROTO, _S_FRAME, _S_POP, _S_POP_MARK, _S_DUP, _S_PUT, _S_GET, _S_EXT) = range(17)
_SPECIAL = {
    "SHORT_BINUNICODE": _S_STR, "BINUNICODE": _S_STR, "BINUNICODE8": _S_STR, "UNICODE": _S_STR,
    "STRING": _S_STR, "BINSTRING": _S_STR, "SHORT_BINSTRING": _S_STR,
    "BINPUT": _S_BINPUT, "LONG_BINPUT": _S_BINPUT, "BINGET": _S_BINGET, "LONG_BINGET": _S_BINGET,
    "MEMOIZE": _S_MEMOIZE, "STACK_GLOBAL": _S_STACK_GLOBAL, "GLOBAL": _S_GLOBAL, "INST": _S_GLOBAL,
    "MARK": _S_MARK, "STOP": _S_STOP, "PROTO": _S_PROTO, "FRAME": _S_FRAME, "POP": _S_POP,
    "POP_MARK": _S_POP_MARK, "DUP": _S_DUP, "PUT": _S_PUT, "GET": _S_GET,
    "EXT1": _S_EXT, "EXT2": _S_EXT, "EXT4": _S_EXT,
}

# One entry per opcode byte: (name, argument kind, fixed size, special id,
#   generic effect: items consumed below a MARK (-1: no MARK), items popped, items pushed).
_Op = tuple[str, int, int, int, int, int, int]


def _build_ops() -> list[_Op | None]:
    table: list[_Op | None] = [None] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if arg is None:
            kind, n = _A_NONE, 0
        elif arg.n >= 0:
            kind, n = _A_FIXED, arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            kind, n = (_A_LINE2 if arg.name == "stringnl_noescape_pair" else _A_LINE), 0
        elif arg.n in _LEN_KINDS:
            kind, n = _LEN_KINDS[arg.n], 0
        else:  # a future layout we don't know: refuse rather than guess
            continue
        before = list(op.stack_before)
        if pickletools.markobject in before:
            mark_below, pops = before.index(pickletools.markobject), 0
        else:
            mark_below, pops = -1, len(before)
        table[op.code.encode("latin-1")[0]] = (
            op.name, kind, n, _SPECIAL.get(op.name, _S_GENERIC), mark_below, pops,
            len(op.stack_after))
    return table


_OPS = _build_ops()
# Opcodes a pickle can begin with (they need nothing on the stack).
_START_OPS = frozenset(
    i for i, op in enumerate(_OPS)
    if op is not None and op[4] < 0 and op[5] == 0 and op[3] not in (_S_BINPUT, _S_PUT))


def _decimal(arg: bytes | None, what: str) -> int:
    try:
        if arg is None:
            raise ValueError
        return int(arg.split(b"\0", 1)[0])  # as the C unpickler parses it: a C string
    except ValueError:
        raise _Invalid(f"{what} argument is not a decimal integer") from None


_UTF8_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})


def _string_value(name: str, arg: bytes | None) -> str | None:
    """The str a string-pushing opcode puts on the stack (None: too long to matter / skipped)."""
    if arg is None or len(arg) > 4 * _MAX_KEPT_STR:
        return None
    try:
        if name in _UTF8_STRINGS:
            value = arg.decode("utf-8", "surrogatepass")
        elif name == "UNICODE":
            value = arg.decode("raw-unicode-escape")
        elif name == "STRING":
            if len(arg) < 2 or arg[0] != arg[-1] or arg[:1] not in (b"'", b'"'):
                raise _Invalid("the STRING opcode argument must be quoted")
            value = codecs.escape_decode(arg[1:-1])[0].decode("latin-1")
        else:  # BINSTRING, SHORT_BINSTRING: str at load time (ASCII by default; latin-1 covers all)
            value = arg.decode("latin-1")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Invalid(f"{name} argument cannot be decoded: {exc}") from None
    return value if len(value) <= _MAX_KEPT_STR else None


def _scan_one(r: _Reader, col: _Collector) -> None:
    """Scan one pickle, through its STOP opcode.

    The hot path reads straight from the reader's buffer; the reader's methods take over
    whenever the buffer runs short."""
    stack = _Stack()
    entries = stack.e
    memo = _Memo()
    proto = 0
    ops = _OPS
    while True:
        buf = r._buf
        pos = r._pos
        if pos < len(buf):
            code = buf[pos]
            pos += 1
            r._pos = pos
        else:
            code = r.read_byte()
            if code < 0:
                raise _Invalid(f"truncated at offset {r.offset}: no STOP opcode")
            buf = r._buf
            pos = r._pos
        op = ops[code]
        if op is None:
            raise _Invalid(f"unknown opcode 0x{code:02x} at offset {r.offset - 1}")
        name, kind, n, sid, mark_below, pops, pushes = op

        # --- the argument
        if kind == _A_NONE:
            arg = None
        elif kind == _A_FIXED:
            end = pos + n
            if end <= len(buf):
                arg = buf[pos:end]
                r._pos = end
            else:
                arg = r.read(n)
        elif kind == _A_LEN1:
            if pos < len(buf) and pos + 1 + buf[pos] <= len(buf):
                end = pos + 1 + buf[pos]
                arg = buf[pos + 1:end]
                r._pos = end
            else:
                arg = r.read(r.read(1)[0])
        elif kind == _A_LINE:
            arg = r.readline(MAX_ARG_IN_MEMORY)
        elif kind == _A_LINE2:
            arg = (r.readline(MAX_ARG_IN_MEMORY), r.readline(MAX_ARG_IN_MEMORY))
        else:
            if kind == _A_LEN8U:
                size = int.from_bytes(r.read(8), "little")
            else:
                size = int.from_bytes(r.read(4), "little", signed=kind == _A_LEN4S)
                if size < 0:
                    raise _Invalid(f"{name} before offset {r.offset} has a negative length")
            if size <= MAX_ARG_IN_MEMORY:
                arg = r.read(size)
            else:
                r.skip(size)
                arg = None

        # --- its effect
        if sid == _S_GENERIC:
            if mark_below >= 0:
                stack.pop_mark()
                for _ in range(mark_below):
                    stack.pop()
            else:
                for _ in range(pops):
                    stack.pop()
            if pushes:  # at most one
                if entries and entries[-1].__class__ is int and entries[-1] > 0:
                    entries[-1] += 1
                else:
                    stack.push_unknown()
        elif sid == _S_MEMOIZE:
            memo.memoize(stack.top())
        elif sid == _S_STR:
            stack.push(_string_value(name, arg))
        elif sid == _S_BINPUT:
            memo.put(int.from_bytes(arg, "little"), stack.top())
        elif sid == _S_BINGET:
            stack.push(memo.get(int.from_bytes(arg, "little")))
        elif sid == _S_MARK:
            stack.push_mark()
        elif sid == _S_STACK_GLOBAL:
            qualname = stack.pop()
            module = stack.pop()
            if module is None or qualname is None:
                col.finding(UNRESOLVED_STACK_GLOBAL, evidence=True)
            else:
                col.global_ref(module, qualname, proto)
            stack.push_unknown()
        elif sid == _S_GLOBAL:  # GLOBAL and INST
            if name == "INST":
                stack.pop_mark()
            module_b, name_b = arg
            if module_b is None or name_b is None:
                col.finding(f"{name} with oversized operands")
            else:
                encoding = "utf-8" if name == "GLOBAL" else "ascii"
                try:
                    module, qualname = module_b.decode(encoding), name_b.decode(encoding)
                except UnicodeDecodeError:
                    raise _Invalid(f"{name} before offset {r.offset} names a non-{encoding} global") from None
                col.global_ref(module, qualname, proto)
            stack.push_unknown()
        elif sid == _S_STOP:
            stack.pop()
            return
        elif sid == _S_PROTO:
            proto = arg[0]
            if proto > pickle.HIGHEST_PROTOCOL:
                raise _Invalid(f"unsupported pickle protocol {proto}")
        elif sid == _S_FRAME:
            pass  # framing only groups opcodes; they are read the same way
        elif sid == _S_POP:
            stack.pop_value_or_mark()
        elif sid == _S_POP_MARK:
            stack.pop_mark()
        elif sid == _S_DUP:
            stack.push(stack.top())
        elif sid == _S_PUT:
            index = _decimal(arg, "PUT")
            if index < 0:
                raise _Invalid("negative PUT argument")
            memo.put(index, stack.top())
        elif sid == _S_GET:
            stack.push(memo.get(_decimal(arg, "GET")))
        elif sid == _S_EXT:
            # Imports whatever the process's copyreg extension registry maps the code to.
            col.finding(f"{name} opcode (global from the copyreg extension registry)", evidence=True)
            stack.push_unknown()
        else:  # pragma: no cover - _SPECIAL and this chain are kept in step
            raise AssertionError(name)


def _scan_pickles(r: _Reader, col: _Collector, where: str = "") -> None:
    """Scan pickle after pickle until the stream ends; a malformed one ends the scan as a finding."""
    prefix = f"{_printable(where)}: " if where else ""
    index = 0
    try:
        while True:
            index += 1
            _scan_one(r, col)
            if r.at_eof():
                return
    except _Invalid as exc:
        context = f" (in pickle #{index} of the stream)" if index > 1 else ""
        col.finding(f"not a valid pickle: {prefix}{exc}{context}")
    except _Limit as exc:
        col.finding(f"scan limit exceeded: {prefix}{exc}")


# --------------------------------------------------------------------------------------------
# Containers and other formats
# --------------------------------------------------------------------------------------------

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_SUFFIXES = (".pkl", ".pickle")


def _sniff_format(head: bytes) -> str | None:
    """Non-pickle model formats whose first byte happens to be a pickle opcode."""
    if head.startswith(b"GGUF"):
        return "GGUF"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "HDF5"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    return None


def _descr_has_object(descr) -> bool:
    if isinstance(descr, str):
        return "O" in descr or "object" in descr
    if isinstance(descr, list):
        return any(not isinstance(f, tuple) or len(f) < 2 or _descr_has_object(f[1]) for f in descr)
    if isinstance(descr, tuple) and descr:
        return _descr_has_object(descr[0])
    return True  # unknown layout: look for a pickle rather than assume there is none


def _scan_npy(r: _Reader, col: _Collector, where: str) -> bool:
    """A .npy array; only an object dtype carries a pickle (after the header). Returns is_pickle."""
    try:
        pre = r.read(8)
        major = pre[6]
        if major == 1:
            size, encoding = int.from_bytes(r.read(2), "little"), "latin-1"
        elif major in (2, 3):
            size, encoding = int.from_bytes(r.read(4), "little"), ("latin-1" if major == 2 else "utf-8")
        else:
            return False
        if size > MAX_ARG_IN_MEMORY:
            col.finding(f"npy header too large to scan: {_printable(where) or 'file'}")
            return True
        header = ast.literal_eval(r.read(size).decode(encoding))
    except (_Invalid, ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return False  # numpy could not load it either
    if not isinstance(header, dict) or "descr" not in header or not _descr_has_object(header["descr"]):
        return False
    _scan_pickles(r, col, where or "npy object payload")
    return True


_MEMBER_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError,
                  OSError, EOFError, ValueError, zlib.error)


def _scan_zip(fileobj: BinaryIO, col: _Collector) -> bool:
    try:
        archive = zipfile.ZipFile(fileobj)
    except _MEMBER_ERRORS as exc:
        col.finding(f"not a valid zip archive: {exc}")
        return True
    is_pickle = False
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            lower = info.filename.lower()
            if lower.endswith(_PICKLE_SUFFIXES):
                is_pickle = True
            elif not lower.endswith(".npy"):
                continue
            where = _printable(info.filename)
            try:
                with archive.open(info) as member:
                    r = _Reader(member, seekable=False)  # seeking a member means decompressing
                    if not lower.endswith(".npy"):
                        if r.at_eof():
                            col.finding(f"not a valid pickle: {where}: empty member")
                        else:
                            _scan_pickles(r, col, where)
                    elif r.peek(len(_NPY_MAGIC)) == _NPY_MAGIC and _scan_npy(r, col, where):
                        is_pickle = True
            except _MEMBER_ERRORS as exc:
                is_pickle = True
                col.finding(f"cannot read archive member {where}: {exc}")
    return is_pickle


# --------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------

def scan_stream(stream: BinaryIO, extra_allowed: Iterable[str] = ()) -> PickleScan:
    """Scan a binary stream (seekable or not) from its current position, without unpickling."""
    if isinstance(extra_allowed, str):
        extra_allowed = (extra_allowed,)
    policy = _policy(DEFAULT_ALLOWED + tuple(p for p in extra_allowed if p))
    col = _Collector(policy)
    start = None
    try:
        if stream.seekable():
            start = stream.tell()
    except (AttributeError, OSError, ValueError):
        start = None
    r = _Reader(stream, seekable=start is not None)
    head = r.peek(16)
    if not head:
        return col.result(False)

    if head[:4] in _ZIP_MAGICS:
        if start is not None:
            stream.seek(start)
            return col.result(_scan_zip(stream, col))
        with tempfile.TemporaryFile() as spool:  # zipfile needs to seek
            spool.write(r.unread_buffer())
            shutil.copyfileobj(stream, spool, _CHUNK)
            spool.seek(0)
            return col.result(_scan_zip(spool, col))

    if head.startswith(_NPY_MAGIC):
        return col.result(_scan_npy(r, col, ""))

    fmt = _sniff_format(head)
    if fmt is not None:
        if head[0] not in _START_OPS:
            return col.result(False)
        # Parse it as a pickle anyway: a polyglot must not pass as "not a pickle".
        probe = _Collector(policy)
        _scan_pickles(r, probe)
        if not probe.evidence:
            return col.result(False)
        col.merge(probe)
        col.finding(f"file looks like {fmt} but its bytes also form a pickle that imports globals")
        return col.result(True)

    if head[0] not in _START_OPS:
        return col.result(False)
    _scan_pickles(r, col)
    return col.result(True)


def might_hold_pickle(head: bytes) -> bool:
    """Whether bytes starting with `head` could be (or contain) a pickle: a zip or .npy
    container, or a first byte an unpickler would accept (protocol 0 and 1 pickles start
    with plain ASCII opcodes, not the PROTO byte). Decide on at least a few KiB."""
    if not head:
        return False
    return head[:4] in _ZIP_MAGICS or head.startswith(_NPY_MAGIC) or head[0] in _START_OPS


def scan_file(path: str | os.PathLike, extra_allowed: Iterable[str] = ()) -> PickleScan:
    """Scan a file on disk. I/O errors (missing file, permissions) propagate."""
    with open(path, "rb") as f:
        return scan_stream(f, extra_allowed)
