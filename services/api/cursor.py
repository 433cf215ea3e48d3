"""Opaque pagination cursors: where the next page starts, signed so they cannot be forged.

A cursor is base64url(JSON position + HMAC). The MAC covers the query's filters too (its
`scope`), so a cursor is only good for the query that produced it; anything altered, truncated
or from another query is a `CursorError` (a 400 problem), never a wrong page or a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

MAX_CURSOR_CHARS = 1024
_MAC_BYTES = 16
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class CursorError(ValueError):
    """The cursor was not made by this registry for this query."""


def scope_of(resource: str, filters: Mapping[str, Any]) -> str:
    """A canonical text of the query a cursor belongs to."""
    return resource + "?" + json.dumps({k: v for k, v in sorted(filters.items()) if v is not None},
                                       separators=(",", ":"), sort_keys=True, default=str)


def _mac(key: bytes, scope: str, body: bytes) -> bytes:
    return hmac.new(key, scope.encode() + b"\0" + body, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(position: Mapping[str, Any], key: bytes, scope: str) -> str:
    body = json.dumps(dict(position), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(body + _mac(key, scope, body)).rstrip(b"=").decode()


def decode(cursor: str, key: bytes, scope: str) -> dict[str, Any]:
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not _BASE64URL.match(cursor):
        raise CursorError("the cursor is not one this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise CursorError("the cursor is not one this API returned") from None
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(key, scope, body)):
        raise CursorError("the cursor was altered, or belongs to a query with other filters")
    try:
        position = json.loads(body)
    except ValueError:
        raise CursorError("the cursor is not one this API returned") from None
    if not isinstance(position, dict):
        raise CursorError("the cursor is not one this API returned")
    return position
