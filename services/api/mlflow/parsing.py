"""MLflow's request messages, read and checked: query parameters for GET, a JSON body otherwise
(as MLflow's client sends them), each field with the error MLflow's client expects when it is
missing or malformed (INVALID_PARAMETER_VALUE), and the search pages' tokens."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from shared.events import MODEL_NAME_PATTERN

from . import filters, mapping
from .errors import invalid

_NAME = re.compile(MODEL_NAME_PATTERN)
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_REPEATED = ("order_by", "stages")


async def params(request: Request) -> dict[str, Any]:
    """MLflow's request message: query parameters for GET, else the JSON body."""
    if request.method == "GET":
        query = request.query_params
        return {k: (query.getlist(k) if k in _REPEATED else query.get(k)) for k in query}
    body = await request.body()
    if not body.strip():
        return dict(request.query_params)
    try:
        parsed = json.loads(body)
    except ValueError:
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise invalid("the request body must be a JSON object")
    return parsed


def text(params: dict[str, Any], field: str, *, required: bool = True, limit: int = 10_000) -> Any:
    value = params.get(field)
    if value in (None, "") and required:
        raise invalid(f"missing value for required parameter '{field}'")
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise invalid(f"'{field}' must be a string of at most {limit} characters")
    return value


def model_name(params: dict[str, Any]) -> str:
    name = text(params, "name", limit=128)
    if not _NAME.match(name):
        raise invalid(f"model name {name[:128]!r}: modelreg names are lower-case letters, digits, '.', '_' and "
                      "'-', starting with a letter or digit, at most 128")
    return str(name)


def version(params: dict[str, Any]) -> int:
    try:
        return mapping.parse_version(text(params, "version", limit=16) if isinstance(params.get("version"), str)
                                     else params.get("version"))
    except ValueError as exc:
        raise invalid(str(exc)) from None


def alias(params: dict[str, Any]) -> str:
    alias = text(params, "alias", limit=255)
    if not _ALIAS.match(alias):
        raise invalid(f"alias {alias[:80]!r}: letters, digits, '_' and '-'")
    return str(alias)


def tags(params: dict[str, Any]) -> dict[str, str]:
    tags = params.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) and isinstance(t.get("key"), str) for t in tags):
        raise invalid("'tags' must be a list of {key, value}")
    return {t["key"]: str(t.get("value") or "") for t in tags}


def max_results(params: dict[str, Any], default: int, limit: int) -> int:
    raw = params.get("max_results")
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid(f"max_results {str(raw)[:20]!r}: expected a whole number") from None
    if not 1 <= value <= limit:
        raise invalid(f"max_results must be between 1 and {limit}, got {value}")
    return value


def offset(token: Any) -> int:
    if token in (None, ""):
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(str(token).encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid("page_token is not one this server returned") from None
    if not isinstance(offset, int) or offset < 0:
        raise invalid("page_token is not one this server returned")
    return offset


def page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def search_filter(text: Any, attributes: Mapping[str, tuple[str, ...]]) -> list[filters.Clause]:
    try:
        return filters.parse_filter(text, attributes)
    except filters.FilterError as exc:
        raise invalid(f"filter: {exc}") from None


def order_by(items: Any, allowed: tuple[str, ...], default: list[filters.Order]) -> list[filters.Order]:
    if isinstance(items, str):
        items = [items]
    try:
        return filters.parse_order_by(items, allowed, default)
    except filters.FilterError as exc:
        raise invalid(str(exc)) from None
