"""Dead letters over HTTP, for admins: `/api/v1/dlq` (list, show, redrive) and the `/dlq` page.

A redrive request only marks the letter; the audit writer republishes the record and signs the
`redriven` audit record (services/audit/dlq.py says why), so the API answers 202 Accepted the
first time and 200 with the letter unchanged every time after.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from shared import dead_letters

from . import auth
from .auth import Identity
from .problems import not_found
from .resources import resources_of
from .routes import Resources, _problem_responses, _time, requires
from .ui import COOKIE, _error_page, _page

# What administering needs: `auth.ADMIN` where auth names actions, the admin role before that
# (services/api/auth.py is being reworked around actions; either way only admins pass).
ADMIN: Any = getattr(auth, "ADMIN", "admin")
_WORD = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
ERRORS = _problem_responses(400, 401, 403, 404)

router = APIRouter(prefix="/api/v1/dlq", tags=["dead letters"])
pages = APIRouter(include_in_schema=False)

LetterId = Path(description="the dead letter's id (its registry.dlq event id)")


@router.get("", responses=ERRORS, summary="Dead letters, newest first (admin)")
async def list_dead_letters(
    res: Resources,
    _admin: Identity = Depends(requires(ADMIN)),
    service: str | None = Query(None, pattern=_WORD, description="refused by this service"),
    kind: str | None = Query(None, pattern=_WORD, description="error kind: not_json, unknown_version, ..."),
    since: str | None = Query(None, max_length=64, description="RFC 3339: dead-lettered at or after"),
    limit: int = Query(100, ge=1, le=dead_letters.MAX_LIST),
) -> dict[str, Any]:
    items = await dead_letters.list_letters(res.pool, service=service, kind=kind, since=_time(since, "since"),
                                            limit=limit)
    return {"items": items}


@router.get("/{letter_id}", responses=ERRORS,
            summary="One dead letter: original bytes, error, its audit records (admin)")
async def show_dead_letter(res: Resources, letter_id: uuid.UUID = LetterId,
                           _admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    letter = await dead_letters.show(res.pool, letter_id)
    if letter is None:
        raise not_found(f"no dead letter {letter_id}")
    return letter


@router.post("/{letter_id}/redrive", status_code=202,
             responses={200: {"description": "asked for before: nothing changed"}, **ERRORS},
             summary="Republish the original record to its topic, once (admin)")
async def redrive_dead_letter(res: Resources, letter_id: uuid.UUID = LetterId,
                              admin: Identity = Depends(requires(ADMIN))) -> Response:
    asked = await dead_letters.request_redrive(res.pool, letter_id, admin.name)
    if asked is None:
        raise not_found(f"no dead letter {letter_id}")
    if asked.requested:
        letter = (await dead_letters.redrive_state(res.pool, asked.requested))[0]
        return JSONResponse({"status": "requested", "letter": letter}, status_code=202)
    letter = asked.already[0]
    status = "already_redriven" if letter["redrive"]["redriven_at"] else "already_requested"
    return JSONResponse({"status": status, "letter": letter}, status_code=200)


@pages.get("/dlq", response_class=HTMLResponse)
async def dead_letters_page(request: Request, service: str = Query("", max_length=64),
                            kind: str = Query("", max_length=64)) -> Response:
    """For admins only, whatever MODELREG_API_OPEN_READS says: letters hold raw input."""
    res = resources_of(request)
    token = auth.bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE)
    identity = await auth.identify(res.pool, token) if token else None
    if identity is None:
        return RedirectResponse(f"/ui/login?next={quote('/dlq', safe='/')}", status_code=303)
    if not auth.allows(identity.role, ADMIN):
        return _error_page(request, 403, f"dead letters are for admins; {identity.name} is a {identity.role}")
    service = service if service and _plain_word(service) else ""
    kind = kind if kind and _plain_word(kind) else ""
    letters = await dead_letters.list_letters(res.pool, service=service or None, kind=kind or None, limit=200)
    return _page(request, "dlq.html", letters=letters, service=service, kind=kind, seq=None, model=None)


def _plain_word(text: str) -> bool:
    return bool(re.match(_WORD, text))
