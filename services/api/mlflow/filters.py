"""MLflow's search filter and order-by syntax, parsed and applied without I/O.

`name LIKE 'fraud-%' AND tags.team = 'risk'` becomes a list of `Clause`s joined by AND (MLflow
has no OR); `matches` applies them to a plain dict (`name`, `tags`, and for versions `run_id`,
`source_path`, `version_number`). Registries are small enough to filter in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class FilterError(ValueError):
    """The filter or order-by text is not one MLflow's syntax allows here."""


@dataclass(frozen=True)
class Clause:
    kind: str          # "attribute" or "tag"
    key: str           # name, run_id, source_path, version_number; or the tag's key
    op: str            # =, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN
    value: Any         # str, int, or a tuple of str for IN


MODEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {"name": ("=", "!=", "LIKE", "ILIKE")}
VERSION_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "name": ("=", "!=", "LIKE", "ILIKE"),
    "run_id": ("=", "!=", "IN", "NOT IN"),
    "source_path": ("=", "!=", "LIKE", "ILIKE"),
    "version_number": ("=", "!=", "<", "<=", ">", ">="),
}
TAG_OPS = ("=", "!=", "LIKE", "ILIKE")

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<list>\((?:\s*(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s*,?)*\s*\))
    | (?P<op>!=|<=|>=|=|<|>)
    | (?P<key>(?:tags?|attributes?|attr)\.(?:`[^`]+`|"[^"]+"|[A-Za-z0-9_.\-/:]+)|[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>-?\d+)
    )""", re.VERBOSE)
_LIST_ITEM = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)\"""")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    text = text.rstrip()
    while at < len(text):
        found = _TOKEN.match(text, at)
        if found is None or found.end() == at:
            raise FilterError(f"cannot parse the filter at {text[at:at + 30]!r}")
        kind = found.lastgroup or ""
        out.append((kind, found.group(kind)))
        at = found.end()
    return out


def _split_key(raw: str) -> tuple[str, str]:
    prefix, dot, rest = raw.partition(".")
    if not dot:
        return "attribute", raw
    if rest[:1] in ("`", '"') and rest[-1:] == rest[:1]:
        rest = rest[1:-1]
    return ("tag" if prefix.startswith("tag") else "attribute"), rest


def parse_filter(text: str | None, attributes: Mapping[str, tuple[str, ...]]) -> list[Clause]:
    """The clauses of `text` (empty: everything matches); FilterError says what is wrong."""
    if text is None or not text.strip():
        return []
    tokens, clauses, at = _tokens(text), [], 0
    while True:
        if at + 1 >= len(tokens):
            raise FilterError(f"incomplete comparison at the end of {text[:200]!r}")
        kind, raw_key = tokens[at]
        if kind != "key" or raw_key.upper() in ("AND", "OR", "NOT", "LIKE", "ILIKE", "IN"):
            raise FilterError(f"expected an attribute or tags.KEY, got {raw_key!r}")
        key_kind, key = _split_key(raw_key)
        at += 1
        op_kind, op = tokens[at]
        op = op.upper()
        if op_kind == "key" and op == "NOT" and at + 1 < len(tokens) and tokens[at + 1][1].upper() == "IN":
            op, at = "NOT IN", at + 1
        elif op_kind not in ("op", "key") or (op_kind == "key" and op not in ("LIKE", "ILIKE", "IN")):
            raise FilterError(f"expected a comparison operator after {raw_key!r}, got {tokens[at][1]!r}")
        at += 1
        if at >= len(tokens):
            raise FilterError(f"{raw_key} {op}: a value is missing")
        value_kind, raw_value = tokens[at]
        value = _value(key_kind, key, op, value_kind, raw_value, attributes)
        clauses.append(Clause(key_kind, key, op, value))
        at += 1
        if at == len(tokens):
            return clauses
        if tokens[at][1].upper() != "AND":
            raise FilterError(f"expected AND between comparisons, got {tokens[at][1]!r} (MLflow has no OR)")
        at += 1
        if at == len(tokens):
            raise FilterError("the filter ends with AND")


def _value(key_kind: str, key: str, op: str, value_kind: str, raw: str,
           attributes: Mapping[str, tuple[str, ...]]) -> Any:
    allowed: tuple[str, ...]
    if key_kind == "tag":
        allowed = TAG_OPS
    elif key in attributes:
        allowed = attributes[key]
    else:
        raise FilterError(f"cannot search by {key!r}; searchable: {', '.join(attributes)} and tags.KEY")
    if op not in allowed:
        raise FilterError(f"{key}: operator {op} is not supported; use one of {', '.join(allowed)}")
    if op in ("IN", "NOT IN"):
        if value_kind != "list":
            raise FilterError(f"{key} {op}: expected a list like ('a', 'b')")
        return tuple(a if a or not b else b for a, b in _LIST_ITEM.findall(raw))
    if key == "version_number":
        if value_kind != "number":
            raise FilterError(f"version_number: expected a whole number, got {raw!r}")
        return int(raw)
    if value_kind != "string":
        raise FilterError(f"{key} {op}: expected a quoted string, got {raw!r}")
    return _unquote(raw)


def like(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """SQL LIKE: % any run, _ one character, everything else literal."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, flags=re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


def _compare(op: str, actual: Any, wanted: Any) -> bool:
    if actual is None:
        return op in ("!=", "NOT IN")
    if op == "=":
        return bool(actual == wanted)
    if op == "!=":
        return bool(actual != wanted)
    if op == "LIKE":
        return like(wanted, str(actual))
    if op == "ILIKE":
        return like(wanted, str(actual), ignore_case=True)
    if op == "IN":
        return actual in wanted
    if op == "NOT IN":
        return actual not in wanted
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    return comparisons[op](actual, wanted)


def matches(clauses: Iterable[Clause], item: Mapping[str, Any]) -> bool:
    """Whether `item` (attributes, and `tags` as a dict) satisfies every clause."""
    for clause in clauses:
        if clause.kind == "tag":
            tags = item.get("tags") or {}
            if clause.key not in tags:
                # Only `!=` holds for a missing tag: MLflow's client itself adds
                # "tag.`mlflow.prompt.is_prompt` != 'true'" to every model search.
                if clause.op == "!=":
                    continue
                return False
            actual = tags[clause.key]
        else:
            actual = item.get(clause.key)
        if not _compare(clause.op, actual, clause.value):
            return False
    return True


@dataclass(frozen=True)
class Order:
    key: str
    descending: bool


def parse_order_by(items: Iterable[str] | None, allowed: Iterable[str], default: list[Order]) -> list[Order]:
    """`["name ASC", "last_updated_timestamp DESC"]` (ASC unless told); FilterError names the bad one."""
    allowed = tuple(allowed)
    orders = []
    for item in items or ():
        parts = item.split()
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC")):
            raise FilterError(f"order_by {item[:80]!r}: expected 'COLUMN [ASC|DESC]'")
        key = parts[0].removeprefix("attributes.").removeprefix("attribute.")
        key = {"timestamp": "creation_timestamp"}.get(key, key)
        if key not in allowed:
            raise FilterError(f"order_by {parts[0][:80]!r}: order by one of {', '.join(allowed)}")
        orders.append(Order(key, len(parts) == 2 and parts[1].upper() == "DESC"))
    keys = {o.key for o in orders}
    return orders + [o for o in default if o.key not in keys]


def sort(items: list[dict[str, Any]], orders: list[Order]) -> list[dict[str, Any]]:
    """Stable sorts, last key first: the first order is the main one."""
    ordered = list(items)
    for order in reversed(orders):
        ordered.sort(key=_sort_key(order.key), reverse=order.descending)
    return ordered


def _sort_key(key: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    def of(item: dict[str, Any]) -> tuple[bool, Any]:
        value = item.get(key)
        return (value is None, "" if value is None else value)  # missing values last
    return of
