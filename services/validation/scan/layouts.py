"""Pickle streams with raw data between or after the pickles, parsed exactly as their loaders do.

- joblib (`joblib.dump`): each numpy array is pickled as a `NumpyArrayWrapper` whose raw bytes
  follow the wrapper's BUILD opcode (an optional alignment pad first); object arrays are a nested
  pickle instead. Sizes come from the wrapper's state: shape and dtype.
- legacy `torch.save` (`_use_new_zipfile_serialization=False`): a magic-number pickle, the
  protocol version, sys_info, the object pickle (whose persistent ids name each storage's type
  and size), the sorted storage keys, then each storage as an int64 element count + raw bytes.
- the older tar `torch.save`: members `sys_info` and `pickle` are pickles; `storages` (count,
  then per storage a pickle + int64 count + raw bytes, then a views pickle) and `tensors`
  (count, then per tensor a pickle + a fixed-size record) interleave pickles with raw data.

Whatever does not fit the layout raises `Invalid`, so the file is refused (fail closed).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .allowlist import TORCH_STORAGE_SIZES
from .findings import Collector
from .pickle_ops import MAX_LIST, UNKNOWN, Built, Global, walk_pickle
from .reader import Invalid, Limit, Reader

JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_TAR_MEMBERS = frozenset({"sys_info", "pickle", "storages", "tensors"})
_MAX_NESTING = 8           # object arrays inside object arrays...
_MAX_RECORDS = 10_000_000  # storages / tensors in one legacy torch file
_NUMPY_DTYPES = frozenset({"numpy.dtype"})
_TYPESTR = re.compile(r"[<>|=]?([a-zA-Z?])(\d*)")


_FLEXIBLE_KINDS = frozenset("USVa")  # sized by the pickled state, as numpy's __setstate__ does


def _dtype_layout(dtype: Any, depth: int = 0) -> tuple[int, bool]:
    """(bytes per item, holds Python objects) of a reconstructed numpy.dtype, computed as numpy
    computes them: fixed kinds ('f8', 'i4', 'O8') take their size from the type string and
    ignore the state's; flexible kinds ('U', 'S', 'V') take it from the state; only 'O' and
    structured or sub-array types containing an 'O' hold objects (the state's flags are
    ignored, as numpy ignores them)."""
    if depth > 32 or dtype.__class__ is not Built or dtype.cls not in _NUMPY_DTYPES \
            or dtype.args.__class__ is not tuple or not dtype.args or dtype.args[0].__class__ is not str:
        raise Invalid("a joblib array whose dtype the scanner cannot read")
    match = _TYPESTR.fullmatch(dtype.args[0])
    if match is None:
        raise Invalid(f"a joblib array with an unknown dtype {dtype.args[0]!r}")
    kind, digits = match.groups()
    if kind not in _FLEXIBLE_KINDS:
        return int(digits or "0"), kind == "O"
    state = dtype.state
    if state.__class__ is not tuple or len(state) < 8 or state[5].__class__ is not int or state[5] <= 0:
        raise Invalid(f"a joblib array of dtype {dtype.args[0]!r} without a readable item size")
    subarray, fields = state[2], state[4]
    parts: list[Any] = []
    if subarray is not None:
        if subarray.__class__ is not tuple or not subarray:
            raise Invalid("a joblib array whose sub-array dtype the scanner cannot read")
        parts.append(subarray[0])
    if fields is not None:
        if fields.__class__ is not dict or UNKNOWN in fields:
            raise Invalid("a joblib array whose structured dtype the scanner cannot read")
        for field in fields.values():
            if field.__class__ is not tuple or not field:
                raise Invalid("a joblib array whose structured dtype the scanner cannot read")
            parts.append(field[0])
    return state[5], any(_dtype_layout(part, depth + 1)[1] for part in parts)


class JoblibArrays:
    """The BUILD hook that steps over the raw bytes of each joblib array."""

    def __init__(self, col: Collector) -> None:
        self.col = col
        self.depth = 0
        self.arrays = 0

    def __call__(self, obj: Built, r: Reader) -> None:
        if obj.cls != JOBLIB_WRAPPER:
            return
        state = obj.state
        if state.__class__ is not dict or UNKNOWN in state:
            raise Invalid("a joblib array wrapper whose state the scanner cannot read")
        shape = state.get("shape")
        if shape.__class__ is not tuple or not all(d.__class__ is int and d >= 0 for d in shape):
            raise Invalid("a joblib array wrapper without a readable shape")
        itemsize, has_objects = _dtype_layout(state.get("dtype"))
        self.arrays += 1
        if has_objects:  # joblib unpickles a nested pickle right here
            if self.depth >= _MAX_NESTING:
                raise Limit(f"joblib object arrays nested more than {_MAX_NESTING} deep")
            self.depth += 1
            try:
                walk_pickle(r, self.col)
            finally:
                self.depth -= 1
            return
        if state.get("numpy_array_alignment_bytes") is not None:
            r.skip(r.read(1)[0])
        r.skip(math.prod(shape) * itemsize)


def _storage_size(storage_type: Any) -> int:
    if storage_type.__class__ is Global:
        name = storage_type.name
        for prefix in ("torch.", "torch.storage."):
            size = TORCH_STORAGE_SIZES.get(name[len(prefix):]) if name.startswith(prefix) else None
            if size is not None:
                return size
    raise Invalid("a legacy torch storage of a type the scanner does not know")


def scan_torch_legacy(r: Reader, col: Collector) -> None:
    """The rest of a legacy torch.save stream, after its magic-number pickle."""
    if walk_pickle(r, col) != 1001:
        raise Invalid("legacy torch file with an unknown protocol version")
    walk_pickle(r, col)  # sys_info
    storages: dict[str, tuple[int, int]] = {}

    def record(pid: Any) -> None:
        if pid.__class__ is tuple and len(pid) >= 5 and pid[0] == "storage":
            _, storage_type, key, _location, numel = pid[:5]
            if key.__class__ is str and numel.__class__ is int:
                storages[key] = (_storage_size(storage_type), numel)

    col.on_persistent_id = record
    try:
        walk_pickle(r, col)
    finally:
        col.on_persistent_id = None
    keys = walk_pickle(r, col, list_limit=MAX_LIST)
    if keys.__class__ is not list or not all(k.__class__ is str for k in keys):
        raise Invalid("legacy torch file whose storage key list the scanner cannot read")
    for key in keys:
        if key not in storages:
            raise Invalid(f"legacy torch storage {key!r} is not described by the object pickle")
        itemsize, _ = storages[key]
        count = int.from_bytes(r.read(8), "little", signed=True)
        if count < 0:
            raise Invalid(f"legacy torch storage {key!r} has a negative size")
        r.skip(count * itemsize)


def _record_count(value: Any, what: str) -> int:
    if value.__class__ is not int or not 0 <= value <= _MAX_RECORDS:
        raise Invalid(f"legacy torch tar member {what} does not start with a record count")
    return value


def scan_torch_tar_member(name: str, r: Reader, col: Collector) -> None:
    """One member of a tar torch.save file, by its name."""
    if name in ("sys_info", "pickle"):
        walk_pickle(r, col)
    elif name == "storages":
        for _ in range(_record_count(walk_pickle(r, col), name)):
            args = walk_pickle(r, col)
            if args.__class__ is not tuple or len(args) != 3:
                raise Invalid("legacy torch storage record the scanner cannot read")
            itemsize = _storage_size(args[2])
            count = int.from_bytes(r.read(8), "little", signed=True)
            if count < 0:
                raise Invalid("legacy torch storage with a negative size")
            r.skip(count * itemsize)
        walk_pickle(r, col)  # the storage views
    else:  # tensors
        for _ in range(_record_count(walk_pickle(r, col), name)):
            walk_pickle(r, col)
            ndim = int.from_bytes(r.read(4), "little", signed=True)
            if not 0 <= ndim <= 64:
                raise Invalid("legacy torch tensor record with an impossible dimension count")
            r.skip(4 + 16 * ndim + 8)
    if not r.at_eof():
        raise Invalid(f"data after the end of legacy torch tar member {name}")
