"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the API answers with, expected or not, is one of these: a handler raises `Problem`,
and the exception handlers installed by `install` turn validation errors, unknown routes and
unexpected faults into the same shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:modelreg:problem:"


class ProblemDocument(BaseModel):
    """The response body of every error (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[dict[str, Any]] | None = None


class Problem(Exception):
    """Raise to answer with a problem document; `kind` names the problem type."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, title: str | None = None,
                 headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _slug(status)
        self.title = title or _phrase(status)
        self.headers = headers or {}
        self.errors = errors


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(status: int) -> str:
    return _phrase(status).lower().replace(" ", "-").replace("'", "")


def document(problem: Problem, instance: str) -> dict[str, Any]:
    body: dict[str, Any] = {"type": TYPE_PREFIX + problem.kind, "title": problem.title,
                            "status": problem.status, "detail": problem.detail, "instance": instance}
    if problem.errors:
        body["errors"] = problem.errors
    return body


def response(problem: Problem, instance: str) -> JSONResponse:
    return JSONResponse(document(problem, instance), status_code=problem.status, headers=problem.headers,
                        media_type=MEDIA_TYPE)


def not_found(detail: str) -> Problem:
    return Problem(404, detail, kind="not-found")


def bad_request(detail: str, *, kind: str = "invalid-request") -> Problem:
    return Problem(400, detail, kind=kind)


def from_validation_errors(errors: list[Any], *, where: str = "") -> Problem:
    """One readable line per error: `query.limit: Input should be less than or equal to 500`."""
    shown = []
    for error in errors[:20]:
        location = ".".join(str(part) for part in error.get("loc", ())) or "request"
        if where:
            location = f"{where}.{location}"
        shown.append({"location": location, "message": str(error.get("msg", "invalid"))})
    detail = "; ".join(f"{e['location']}: {e['message']}" for e in shown[:5]) or "the request is invalid"
    return Problem(400, detail, kind="invalid-request", errors=shown)


def install(app: FastAPI) -> None:
    """Every error path answers with a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return response(from_validation_errors(list(exc.errors())), request.url.path)

    @app.exception_handler(ValidationError)
    async def _invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        return response(from_validation_errors(list(exc.errors())), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != _phrase(exc.status_code) else None
        if exc.status_code == 404:
            detail = detail or f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            detail = detail or f"{request.method} is not allowed on {request.url.path}"
        problem = Problem(exc.status_code, detail or _phrase(exc.status_code),
                          headers=dict(exc.headers or {}))
        return response(problem, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        problem = Problem(500, "the server failed to answer this request; the error is logged",
                          kind="internal-error")
        return response(problem, request.url.path)
