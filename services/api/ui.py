"""The web UI: server-rendered pages over the same documents the API serves.

Pages poll `/ui/state` every two seconds (static/app.js) and re-render in place when the
model's newest audit seq moves, so they follow the registry live. When reads need a token
(MODELREG_API_OPEN_READS=false) the UI asks for one once and keeps it in an HttpOnly cookie.

The approver's view: someone signed in with a token that may approve this model sees, on a
version page, "request promotion" (none -> staging) or "approve" (staging -> production) beside
the gates `/explain` reports; the request is published as `promotion.requested` with the
token's name as the actor, exactly as the API does. Readers and anonymous visitors see no buttons.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from shared.events import MODEL_NAME_PATTERN, STAGES
from shared.policy import Rule

from . import auth, presentation, queries
from .problems import Problem
from .resources import ApiResources, resources_of
from .routes import (
    MAX_VERSION,
    _publishing,
    _validated_or_409,
    _version_or_404,
    explanation,
    model_document,
    out_of_scope,
    presigned_artifact,
    version_document,
)

COOKIE = "modelreg_token"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
PAGE_SIZE = 100

router = APIRouter(include_in_schema=False)
templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
templates.filters["when"] = presentation.when
templates.filters["size"] = presentation.size
templates.filters["num"] = lambda v: "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
templates.globals["quote"] = lambda v: quote(str(v), safe="")
templates.globals["session_cookie"] = COOKIE  # base.html offers "Sign out" while it is set


class _Login(Exception):
    pass


async def _viewer(request: Request, res: ApiResources) -> auth.Identity | None:
    """Who is signed in (header or the UI's cookie); None for nobody, or a revoked or expired token."""
    token = auth.bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE)
    if not token:
        return None
    return await auth.identify(res.pool, token)


class _OutOfScope(Exception):
    pass


async def _allowed(request: Request, res: ApiResources) -> None:
    """Reads are open, or the caller brings a live token whose scope covers the page's model."""
    if res.api.open_reads:
        return
    viewer = await _viewer(request, res)
    if viewer is None:
        raise _Login()
    refusal = out_of_scope(viewer, request.path_params.get("name") or request.query_params.get("model"))
    if refusal is not None:
        raise _OutOfScope(refusal.detail)


def approver_actions(viewer: auth.Identity | None, doc: dict[str, Any], gates: dict[str, Any]) -> dict[str, Any]:
    """What the version page offers the signed-in person: buttons only for an approver in scope,
    and for a version validation passed; otherwise why not (nothing at all for readers)."""
    if viewer is None or not auth.allows(viewer.role, auth.APPROVE) or not viewer.may_touch(doc["name"]):
        return {"buttons": [], "note": None}
    if viewer.name == doc.get("registered_by"):
        return {"buttons": [], "note": "You registered this version: another approver must approve it."}
    if doc["status"] != "validated":
        return {"buttons": [], "note": f"Not validated ({doc['status']}): it cannot be moved up."}
    if gates.get("blocked"):
        return {"buttons": [], "note": f"{gates['blocked'].replace('_', ' ')}: it cannot be moved up."}
    if doc["stage"] == "none":
        return {"buttons": [{"to_stage": "staging", "label": "Request promotion to staging"}], "note": None}
    if doc["stage"] == "staging":
        failing = [g["gate"] for g in gates["gates"] if not g["passed"]]
        note = f"Gates failing: {', '.join(failing)}. Approving moves it anyway." if failing else None
        return {"buttons": [{"to_stage": "production", "label": "Approve for production"}], "note": note}
    return {"buttons": [], "note": None}


# Everything a page uses comes from this server: no inline script, no CDN, no third party.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("viewer", None)
    html = templates.get_template(template).render(request=request, stages=STAGES, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", status=status, status_code=status, message=message, seq=None, model=None)


async def _guard(request: Request) -> ApiResources | Response:
    res = resources_of(request)
    try:
        await _allowed(request, res)
    except _Login:
        return RedirectResponse(f"/ui/login?next={quote(request.url.path, safe='/')}", status_code=303)
    except _OutOfScope as exc:
        return _error_page(request, 403, str(exc))
    return res


def _valid_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, prefix: str = Query("", max_length=128), stage: str = Query("", max_length=16),
                tag: str = Query("", max_length=1200)) -> Response:
    res = await _guard(request)
    if isinstance(res, Response):
        return res
    prefix = prefix.strip().lower()
    if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
        prefix = ""
    stage_filter = stage if stage in STAGES else None
    tag_pair = None
    if "=" in tag and "\x00" not in tag:
        key, _, value = tag.partition("=")
        tag_pair = (key, value) if 1 <= len(key) <= 128 and len(value) <= 1024 else None
    models = await queries.list_models(res.pool, prefix=prefix or None, tag=tag_pair, stage=stage_filter,
                                       limit=PAGE_SIZE)
    return _page(request, "index.html", models=models, prefix=prefix, stage=stage_filter or "", tag=tag,
                 seq=await queries.last_seq(res.pool), model=None, page_size=PAGE_SIZE)


def _chart(document: dict[str, Any], rule: Rule) -> Markup | None:
    metric = document["chart_metric"]
    if metric is None:
        return None
    points = [presentation.Point(v["version"], v["key_metrics"].get(metric), v["stage"], v["is_champion"])
              for v in document["versions"]]
    lines = [presentation.Line(f"{t.key} {t}", t.value) for t in rule.thresholds if t.metric == metric]
    lines += [presentation.Line(f"rollback {t.key} {t}", t.value, "rollback") for t in rule.rollback
              if t.metric == metric]
    return Markup(presentation.chart_svg(metric, points, lines))


@router.get("/models/{name}", response_class=HTMLResponse)
async def model_page(request: Request, name: str) -> Response:
    res = await _guard(request)
    if isinstance(res, Response):
        return res
    if not _valid_name(name):
        return _error_page(request, 404, f"{name[:128]!r} is not a model name")
    try:
        document = await model_document(res, name)
    except Problem as exc:
        return _error_page(request, exc.status, exc.detail)
    rule = res.policy.rule_for(name)
    changes = await queries.stage_changes(res.pool, name)
    timeline = [{**c, "kind": presentation.change_kind(c), "text": presentation.change_text(c)}
                for c in reversed(changes)]
    return _page(request, "model.html", model=name, doc=document, rule=rule, rule_doc=rule.to_dict(),
                 chart=_chart(document, rule), timeline=timeline, seq=await queries.last_seq(res.pool, name),
                 versions=list(reversed(document["versions"])))


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
async def version_page(request: Request, name: str, version: str) -> Response:
    res = await _guard(request)
    if isinstance(res, Response):
        return res
    if not _valid_name(name) or not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        return _error_page(request, 404, "no such model version")
    number = int(version)
    try:
        document = await version_document(res, name, number)
        gates = await explanation(res, name, number)
    except Problem as exc:
        return _error_page(request, exc.status, exc.detail)
    trail = await queries.audit(res.pool, model=name, version=number, limit=500)
    history = [{**c, "kind": presentation.change_kind(c), "text": presentation.change_text(c)}
               for c in document["stage_history"]]
    viewer = await _viewer(request, res)
    return _page(request, "version.html", model=name, doc=document, gates=gates, trail=trail, history=history,
                 seq=await queries.last_seq(res.pool, name), viewer=viewer,
                 actions=approver_actions(viewer, document, gates))


@router.post("/models/{name}/versions/{version}/promote")
async def promote(request: Request, name: str, version: str, to_stage: str = Form(..., max_length=16),
                  reason: str = Form("", max_length=2000)) -> Response:
    """The approver's buttons: publish promotion.requested as the signed-in token's name."""
    res = resources_of(request)
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        return _error_page(request, 403, "requests from other sites are refused")
    viewer = await _viewer(request, res)
    if viewer is None:
        return RedirectResponse(f"/ui/login?next={quote(request.url.path.rsplit('/', 1)[0], safe='/')}",
                                status_code=303)
    if not _valid_name(name) or not version.isdigit() or not 1 <= int(version) <= MAX_VERSION \
            or to_stage not in ("staging", "production"):
        return _error_page(request, 400, "no such model version or stage")
    number = int(version)
    refusal = out_of_scope(viewer, name)
    if refusal is None and not auth.allows(viewer.role, auth.APPROVE):
        refusal = Problem(403, f"{viewer.name} has role {viewer.role}; approving needs role approver (or admin)")
    try:
        if refusal is not None:
            raise refusal
        row = await _version_or_404(res, name, number)
        _validated_or_409(row, f"it cannot be moved to {to_stage} before it does")
        async with _publishing("publish promotion.requested"):
            await res.registry.request_promotion(name, number, to_stage=to_stage, actor=viewer.name,
                                                 reason=reason.strip() or f"approved in the web UI by {viewer.name}")
    except Problem as exc:
        return _error_page(request, exc.status, exc.detail)
    return RedirectResponse(f"/models/{quote(name, safe='')}/versions/{number}?requested={to_stage}", status_code=303)


@router.get("/models/{name}/versions/{version}/download")
async def download(request: Request, name: str, version: str) -> Response:
    res = await _guard(request)
    if isinstance(res, Response):
        return res
    if not _valid_name(name) or not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        return _error_page(request, 404, "no such model version")
    try:
        link = await presigned_artifact(res, name, int(version))
    except Problem as exc:
        return _error_page(request, exc.status, exc.detail)
    return RedirectResponse(link["url"], status_code=307)


@router.get("/ui/state")
async def state(request: Request, model: str | None = Query(None, max_length=128)) -> Response:
    """The newest audit seq (of one model): pages re-render when it moves."""
    res = resources_of(request)
    try:
        await _allowed(request, res)
    except _Login:
        return JSONResponse({"login": True}, status_code=401)
    except _OutOfScope:
        return JSONResponse({"login": False}, status_code=403)
    name = model if model and _valid_name(model) else None
    return JSONResponse({"seq": await queries.last_seq(res.pool, name)}, headers={"Cache-Control": "no-store"})


@router.get("/ui/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = Query("/", max_length=512)) -> HTMLResponse:
    return _page(request, "login.html", next=_local(next), error=None, seq=None, model=None)


@router.post("/ui/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form("", max_length=200),
                next: str = Form("/", max_length=512)) -> Response:
    res = resources_of(request)
    identity = await auth.identify(res.pool, token.strip()) if token.strip() else None
    if identity is None:
        return _page(request, "login.html", status=401, next=_local(next), error="unknown, revoked or expired token",
                     seq=None, model=None)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=12 * 3600)
    return response


@router.post("/ui/logout")
async def logout() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _local(target: str) -> str:
    """Only paths on this site: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
