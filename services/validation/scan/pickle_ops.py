"""Walks a pickle's opcodes without unpickling it, and reports every global it would import.

Unpickling runs code: every global a pickle names (`GLOBAL`, `INST`, `STACK_GLOBAL`) is imported,
and `REDUCE`/`BUILD`/`NEWOBJ`/`OBJ` call what was imported. This module reads the opcode stream
itself and simulates just enough of the unpickler's stack and memo to know which globals are
referenced (`STACK_GLOBAL` names built from memoized strings included), and the few small values
the layouts around pickles need: joblib writes an array's raw bytes right after the `BUILD` of
its `NumpyArrayWrapper` (size from the wrapper's shape and dtype), legacy `torch.save` writes
storages after its pickles (sizes from the persistent ids).

Memory stays bounded whatever the input: the stream is read through `Reader`, any argument
longer than 64 KiB is skipped and replaced by an unknown value, runs of unknowns on the
simulated stack are run-length encoded, small values (ints, short tuples/lists/dicts, globals)
are kept only up to fixed sizes, and the memo keeps strings in a compact arena with a budget.
Past a budget the walker forgets values; a `STACK_GLOBAL` that needs a forgotten value is
reported as unresolved (fail closed).
"""

from __future__ import annotations

import codecs
import pickle
import pickletools
from array import array
from collections.abc import Callable
from typing import Any, Protocol

from .reader import Invalid, Limit, Reader

MAX_ARG_IN_MEMORY = 64 * 1024       # longer length-prefixed arguments are skipped, not read
_MAX_KEPT_STR = 1024                # longer strings can't be module/qualnames: tracked as opaque
_STACK_STR_BUDGET = 16 << 20        # chars (+overhead) of strings held on the simulated stack
_MAX_STACK_ENTRIES = 1_000_000      # run-length-encoded entries of the simulated stack
_MEMO_ARENA_BUDGET = 32 << 20       # bytes of memoized strings kept
_MEMO_MAX_SLOTS = 4 << 20           # dense memo slots with a value (8 bytes each)
_MEMO_MAX_EXTRA = 100_000           # out-of-order memo keys before giving up (fail closed)
_MEMO_MAX_VALUES = 200_000          # memoized non-string values kept
_MAX_SMALL = 64                     # items kept in a tracked tuple (numpy allows 64 dimensions)
_MAX_DICT = 1024                    # entries kept in a tracked dict
MAX_LIST = 1 << 16                  # items a layout may ask a list to keep (legacy torch keys)
_MAX_BOXED_DEPTH = 50_000           # past this stack depth small values are no longer tracked

UNRESOLVED_STACK_GLOBAL = "STACK_GLOBAL with non-constant operands"


class Unknown:
    """A value the walker does not track (there is one instance: UNKNOWN)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()


class Global:
    """A global the pickle imports, as a value (what GLOBAL / STACK_GLOBAL push)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Built:
    """What calling a global made (REDUCE / NEWOBJ), with its arguments and BUILD state."""

    __slots__ = ("cls", "args", "state")

    def __init__(self, cls: str, args: Any) -> None:
        self.cls, self.args = cls, args
        self.state: Any = UNKNOWN  # what BUILD sets: any unpickled value


class _Box:
    """A tracked non-string value on the simulated stack."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v


class Sink(Protocol):
    """Where the walker reports: globals, findings, and the layout hooks."""

    def global_ref(self, module: str, name: str, proto: int) -> str: ...
    def finding(self, text: str, evidence: bool = False) -> None: ...
    on_build: Callable[[Built, Reader], None] | None
    on_persistent_id: Callable[[Any], None] | None


# --------------------------------------------------------------------------------------------
# Simulated stack and memo
# --------------------------------------------------------------------------------------------

class _Stack:
    """The unpickler's stack (with MARKs) where only strings and small values keep their value.

    Entries: a str (a known string), a _Box (another tracked value), an int n > 0 (a run of n
    unknown values), an int -n < 0 (a run of n MARKs)."""

    __slots__ = ("e", "cost")

    def __init__(self) -> None:
        self.e: list[Any] = []  # the entries above: str, _Box or int
        self.cost = 0

    def _append(self, item: Any) -> None:
        if len(self.e) >= _MAX_STACK_ENTRIES:
            raise Limit(f"simulated stack exceeds {_MAX_STACK_ENTRIES} entries")
        self.e.append(item)

    def push_unknown(self) -> None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is int and t > 0:
                e[-1] = t + 1
                return
        self._append(1)

    def push(self, value: Any) -> None:
        if value.__class__ is str:
            cost = len(value) + 64
            if self.cost + cost > _STACK_STR_BUDGET:
                self.push_unknown()
                return
            self._append(value)
            self.cost += cost
        elif value is UNKNOWN or len(self.e) > _MAX_BOXED_DEPTH:
            self.push_unknown()  # deep in a huge flat run (a giant tuple): values matter no more
        else:
            self._append(_Box(value))

    def push_mark(self) -> None:
        e = self.e
        if e:
            t = e[-1]
            if t.__class__ is int and t < 0:
                e[-1] = t - 1
                return
        self._append(-1)

    def pop(self) -> Any:
        """The top value: a str, a tracked value, or UNKNOWN."""
        e = self.e
        if e:
            t = e[-1]
            cls = t.__class__
            if cls is str:
                e.pop()
                self.cost -= len(t) + 64
                return t
            if cls is _Box:
                e.pop()
                return t.v
            if t > 0:
                if t == 1:
                    e.pop()
                else:
                    e[-1] = t - 1
                return UNKNOWN
        raise Invalid("unpickling stack underflow")

    def top(self) -> Any:
        e = self.e
        if e:
            t = e[-1]
            cls = t.__class__
            if cls is str:
                return t
            if cls is _Box:
                return t.v
            if t > 0:
                return UNKNOWN
        raise Invalid("unpickling stack underflow")

    def pop_mark(self) -> None:
        e = self.e
        while e:
            t = e.pop()
            cls = t.__class__
            if cls is str:
                self.cost -= len(t) + 64
            elif cls is int and t < 0:
                if t != -1:
                    e.append(t + 1)
                return
        raise Invalid("MARK expected but the stack has none")

    def pop_to_mark(self, keep: int) -> list[Any] | None:
        """Pop the items above the topmost MARK and the MARK; return them bottom first, or None
        when there are more than `keep` of them (they are dropped all the same)."""
        e = self.e
        items: list[Any] | None = []
        while e:
            t = e.pop()
            cls = t.__class__
            if cls is str:
                self.cost -= len(t) + 64
                v: Any = t
            elif cls is _Box:
                v = t.v
            elif t < 0:
                if t != -1:
                    e.append(t + 1)
                if items is not None:
                    items.reverse()
                return items
            else:
                if items is not None and len(items) + t <= keep:
                    items.extend([UNKNOWN] * t)
                else:
                    items = None
                continue
            if items is not None:
                if len(items) < keep:
                    items.append(v)
                else:
                    items = None
        raise Invalid("MARK expected but the stack has none")

    def pop_value_or_mark(self) -> None:  # the POP opcode
        e = self.e
        if e and (e[-1].__class__ is not int or e[-1] > 0):
            self.pop()
        else:
            self.pop_mark()


_NOT_STR = -2  # a memo slot whose value lives in _Memo.values


class _Memo:
    """The unpickler's memo, keeping strings compactly and a bounded number of small values.

    Keys 0..dense-1 all exist (the normal case: picklers use len(memo) as the next key); their
    values live in `vals` (-1: not kept, -2: in `values`, else an offset into the string arena).
    Other keys go to `extra`. If that grows too large the memo is `poisoned`: every GET yields an
    unknown value from then on (fail closed) since MEMOIZE's key is no longer known."""

    __slots__ = ("vals", "arena", "dense", "extra", "values", "poisoned")

    def __init__(self) -> None:
        self.vals = array("q")
        self.arena = bytearray()
        self.dense = 0
        self.extra: dict[int, int] = {}
        self.values: dict[int, Any] = {}
        self.poisoned = False

    def _store(self, idx: int, value: Any) -> int:
        if value.__class__ is not str:
            if value is UNKNOWN:
                return -1
            if idx in self.values or len(self.values) < _MEMO_MAX_VALUES:
                self.values[idx] = value
                return _NOT_STR
            return -1
        data = value.encode("utf-8", "surrogatepass")
        if len(self.arena) + len(data) + 4 > _MEMO_ARENA_BUDGET:
            return -1
        off = len(self.arena)
        self.arena += len(data).to_bytes(4, "little")
        self.arena += data
        return off

    def _load(self, idx: int, off: int) -> Any:
        if off == _NOT_STR:
            return self.values[idx]
        if off < 0:
            return UNKNOWN
        n = int.from_bytes(self.arena[off:off + 4], "little")
        return self.arena[off + 4:off + 4 + n].decode("utf-8", "surrogatepass")

    def _append(self, off: int) -> None:
        if len(self.vals) == self.dense and self.dense < _MEMO_MAX_SLOTS:
            self.vals.append(off)
        self.dense += 1

    def put(self, idx: int, value: Any) -> None:
        if self.poisoned:
            return
        if idx < self.dense:
            if idx < len(self.vals):
                self.vals[idx] = self._store(idx, value)
        elif idx == self.dense:
            self._append(self._store(idx, value))
            extra = self.extra
            while extra and self.dense in extra:
                self._append(extra.pop(self.dense))
        elif idx in self.extra or len(self.extra) < _MEMO_MAX_EXTRA:
            self.extra[idx] = self._store(idx, value)
        else:
            self.poisoned = True

    def memoize(self, value: Any) -> None:
        self.put(self.dense + len(self.extra), value)

    def get(self, idx: int) -> Any:
        if self.poisoned:
            return UNKNOWN
        if idx < self.dense:
            return self._load(idx, self.vals[idx]) if idx < len(self.vals) else UNKNOWN
        if idx in self.extra:
            return self._load(idx, self.extra[idx])
        raise Invalid(f"memo key {idx} not found")


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

# Opcodes given their own handling in walk_pickle; every other one is a generic stack effect.
(_S_GENERIC, _S_STR, _S_BINPUT, _S_BINGET, _S_MEMOIZE, _S_STACK_GLOBAL, _S_GLOBAL, _S_MARK,
 _S_STOP, _S_PROTO, _S_FRAME, _S_POP, _S_POP_MARK, _S_DUP, _S_PUT, _S_GET, _S_EXT,
 _S_CONST, _S_INT, _S_TUPLE_N, _S_TUPLE_MARK, _S_EMPTY, _S_SETITEM, _S_SETITEMS, _S_APPEND,
 _S_APPENDS, _S_CALL, _S_BUILD, _S_PERSID) = range(29)
_SPECIAL = {
    "SHORT_BINUNICODE": _S_STR, "BINUNICODE": _S_STR, "BINUNICODE8": _S_STR, "UNICODE": _S_STR,
    "STRING": _S_STR, "BINSTRING": _S_STR, "SHORT_BINSTRING": _S_STR,
    "BINPUT": _S_BINPUT, "LONG_BINPUT": _S_BINPUT, "BINGET": _S_BINGET, "LONG_BINGET": _S_BINGET,
    "MEMOIZE": _S_MEMOIZE, "STACK_GLOBAL": _S_STACK_GLOBAL, "GLOBAL": _S_GLOBAL, "INST": _S_GLOBAL,
    "MARK": _S_MARK, "STOP": _S_STOP, "PROTO": _S_PROTO, "FRAME": _S_FRAME, "POP": _S_POP,
    "POP_MARK": _S_POP_MARK, "DUP": _S_DUP, "PUT": _S_PUT, "GET": _S_GET,
    "EXT1": _S_EXT, "EXT2": _S_EXT, "EXT4": _S_EXT,
    "NONE": _S_CONST, "NEWTRUE": _S_CONST, "NEWFALSE": _S_CONST,
    "BININT": _S_INT, "BININT1": _S_INT, "BININT2": _S_INT, "LONG1": _S_INT, "LONG4": _S_INT,
    "INT": _S_INT, "LONG": _S_INT,
    "TUPLE1": _S_TUPLE_N, "TUPLE2": _S_TUPLE_N, "TUPLE3": _S_TUPLE_N,
    "TUPLE": _S_TUPLE_MARK, "LIST": _S_TUPLE_MARK, "DICT": _S_TUPLE_MARK,
    "EMPTY_TUPLE": _S_EMPTY, "EMPTY_LIST": _S_EMPTY, "EMPTY_DICT": _S_EMPTY,
    "SETITEM": _S_SETITEM, "SETITEMS": _S_SETITEMS, "APPEND": _S_APPEND, "APPENDS": _S_APPENDS,
    "REDUCE": _S_CALL, "NEWOBJ": _S_CALL, "NEWOBJ_EX": _S_CALL,
    "BUILD": _S_BUILD, "BINPERSID": _S_PERSID,
}
_CONSTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_BININTS = frozenset({0x4A, 0x4B, 0x4D})  # BININT, BININT1, BININT2
_TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}

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
START_OPS = frozenset(
    i for i, op in enumerate(_OPS)
    if op is not None and op[4] < 0 and op[5] == 0 and op[3] not in (_S_BINPUT, _S_PUT))


def _decimal(arg: bytes | None, what: str) -> int:
    try:
        if arg is None:
            raise ValueError
        return int(arg.split(b"\0", 1)[0])  # as the C unpickler parses it: a C string
    except ValueError:
        raise Invalid(f"{what} argument is not a decimal integer") from None


def _int_value(name: str, arg: bytes | None) -> Any:
    if arg is None:
        return UNKNOWN
    if name in ("BININT1", "BININT2"):
        return int.from_bytes(arg, "little")
    if name in ("BININT", "LONG1", "LONG4"):
        return int.from_bytes(arg, "little", signed=True) if len(arg) <= 64 else UNKNOWN
    text = arg.rstrip(b"L") if name == "LONG" else arg
    if name == "INT" and text in (b"00", b"01"):
        return text == b"01"
    try:
        return int(text) if len(text) <= 64 else UNKNOWN
    except ValueError:
        raise Invalid(f"{name} argument is not a decimal integer") from None


_UTF8_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})


def _string_value(name: str, arg: bytes | None) -> Any:
    """The str a string-pushing opcode puts on the stack (UNKNOWN: too long to matter)."""
    if arg is None or len(arg) > 4 * _MAX_KEPT_STR:
        return UNKNOWN
    try:
        if name in _UTF8_STRINGS:
            value = arg.decode("utf-8", "surrogatepass")
        elif name == "UNICODE":
            value = arg.decode("raw-unicode-escape")
        elif name == "STRING":
            if len(arg) < 2 or arg[0] != arg[-1] or arg[:1] not in (b"'", b'"'):
                raise Invalid("the STRING opcode argument must be quoted")
            value = codecs.escape_decode(arg[1:-1])[0].decode("latin-1")
        else:  # BINSTRING, SHORT_BINSTRING: str at load time (ASCII by default; latin-1 covers all)
            value = arg.decode("latin-1")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"{name} argument cannot be decoded: {exc}") from None
    return value if len(value) <= _MAX_KEPT_STR else UNKNOWN


def _collection(name: str, items: list[Any] | None) -> Any:
    if items is None:
        return UNKNOWN
    if name == "TUPLE":
        return tuple(items)
    if name == "LIST":
        return items
    if len(items) % 2:
        raise Invalid("DICT needs key/value pairs")
    out: dict[Any, Any] = {}
    _set_items(out, items)
    return out


def _set_items(target: Any, items: list[Any] | None) -> None:
    if target.__class__ is not dict or UNKNOWN in target:
        return
    if items is not None and len(items) % 2:
        raise Invalid("SETITEMS needs key/value pairs")
    if (items is None or len(target) + len(items) // 2 > _MAX_DICT
            or not all(k.__class__ in (str, int, bool) for k in items[::2])):
        target.clear()  # some keys could not be kept: forget the dict rather than keep half of it
        target[UNKNOWN] = UNKNOWN
        return
    for k, v in zip(items[::2], items[1::2], strict=False):  # an odd last item has no value
        target[k] = v


def _append_items(target: Any, items: list[Any] | None, limit: int) -> None:
    if target.__class__ is not list:
        return
    if items is None or len(target) + len(items) > limit:
        target.clear()
        target.append(UNKNOWN)  # a list that lost items: a reader checking it must refuse it
        return
    target.extend(items)


def walk_pickle(r: Reader, sink: Sink, list_limit: int = _MAX_SMALL) -> Any:
    """Walk one pickle through its STOP opcode; return the value STOP pops (or UNKNOWN).
    Lists keep their items up to `list_limit` (more only where a layout needs a long list).

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
                raise Invalid(f"truncated at offset {r.offset}: no STOP opcode")
            buf = r._buf
            pos = r._pos
        op = ops[code]
        if op is None:
            raise Invalid(f"unknown opcode 0x{code:02x} at offset {r.offset - 1}")
        name, kind, n, sid, mark_below, pops, pushes = op

        # --- the argument: bytes, a pair of lines (GLOBAL, INST), or None (none, or skipped as too long)
        arg: Any
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
                    raise Invalid(f"{name} before offset {r.offset} has a negative length")
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
        elif sid == _S_INT:
            if code in _BININTS and len(entries) <= _MAX_BOXED_DEPTH:  # the common cases, inline
                entries.append(_Box(int.from_bytes(arg, "little", signed=code == 0x4A)))
            else:
                stack.push(_int_value(name, arg))
        elif sid == _S_CONST:
            stack.push(_CONSTS[name])
        elif sid == _S_MARK:
            stack.push_mark()
        elif sid == _S_TUPLE_N:
            popped = [stack.pop() for _ in range(_TUPLE_SIZES[name])]
            popped.reverse()
            stack.push(tuple(popped))
        elif sid == _S_TUPLE_MARK:
            keep = list_limit if name == "LIST" else 2 * _MAX_DICT if name == "DICT" else _MAX_SMALL
            stack.push(_collection(name, stack.pop_to_mark(keep)))
        elif sid == _S_EMPTY:
            stack.push(() if name == "EMPTY_TUPLE" else [] if name == "EMPTY_LIST" else {})
        elif sid == _S_SETITEM:
            value = stack.pop()
            key = stack.pop()
            _set_items(stack.top(), [key, value])
        elif sid == _S_SETITEMS:
            items = stack.pop_to_mark(2 * _MAX_DICT)
            _set_items(stack.top(), items)
        elif sid == _S_APPEND:
            value = stack.pop()
            _append_items(stack.top(), [value], list_limit)
        elif sid == _S_APPENDS:
            items = stack.pop_to_mark(list_limit)
            _append_items(stack.top(), items, list_limit)
        elif sid == _S_CALL:
            if name == "NEWOBJ_EX":
                stack.pop()
            args = stack.pop()
            func = stack.pop()
            stack.push(Built(func.name, args) if func.__class__ is Global else UNKNOWN)
        elif sid == _S_BUILD:
            state = stack.pop()
            target = stack.top()
            if target.__class__ is Built:
                target.state = state
                if sink.on_build is not None:
                    sink.on_build(target, r)
        elif sid == _S_PERSID:
            pid = stack.pop()
            if sink.on_persistent_id is not None:
                sink.on_persistent_id(pid)
            stack.push_unknown()
        elif sid == _S_STACK_GLOBAL:
            qualname = stack.pop()
            module = stack.pop()
            if module.__class__ is not str or qualname.__class__ is not str:
                sink.finding(UNRESOLVED_STACK_GLOBAL, evidence=True)
                stack.push_unknown()
            else:
                stack.push(Global(sink.global_ref(module, qualname, proto)))
        elif sid == _S_GLOBAL:  # GLOBAL and INST
            if name == "INST":
                stack.pop_mark()
            module_b, name_b = arg
            if module_b is None or name_b is None:
                sink.finding(f"{name} with oversized operands")
                stack.push_unknown()
                continue
            encoding = "utf-8" if name == "GLOBAL" else "ascii"
            try:
                module, qualname = module_b.decode(encoding), name_b.decode(encoding)
            except UnicodeDecodeError:
                raise Invalid(f"{name} before offset {r.offset} names a non-{encoding} global") from None
            full = sink.global_ref(module, qualname, proto)
            if name == "GLOBAL":
                stack.push(Global(full))
            else:
                stack.push_unknown()
        elif sid == _S_STOP:
            return stack.pop()
        elif sid == _S_PROTO:
            proto = arg[0]
            if proto > pickle.HIGHEST_PROTOCOL:
                raise Invalid(f"unsupported pickle protocol {proto}")
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
                raise Invalid("negative PUT argument")
            memo.put(index, stack.top())
        elif sid == _S_GET:
            stack.push(memo.get(_decimal(arg, "GET")))
        elif sid == _S_EXT:
            # Imports whatever the process's copyreg extension registry maps the code to.
            sink.finding(f"{name} opcode (global from the copyreg extension registry)", evidence=True)
            stack.push_unknown()
        else:  # pragma: no cover - _SPECIAL and this chain are kept in step
            raise AssertionError(name)
