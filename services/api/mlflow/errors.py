"""Errors in MLflow's shape, `{"error_code": ..., "message": ...}`, with the HTTP status MLflow's
server gives each code, so its client raises the exception it always does (`RestException`
with `error_code == "RESOURCE_DOES_NOT_EXIST"`, ...).

`MlflowRoute` answers every failure of an MLflow route that way: this API's own `Problem`s
(401 from a bad token, 503 from Kafka), request validation errors and unexpected faults, so the
app-wide problem+json handlers never see them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from ..problems import Problem

log = logging.getLogger(__name__)

# MLflow's mlflow/exceptions.py ERROR_CODE_TO_HTTP_STATUS, for the codes answered here.
HTTP_STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_CONFLICT": 409,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
    "TEMPORARILY_UNAVAILABLE": 503,
}
_FROM_STATUS = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_CONFLICT", 411: "BAD_REQUEST",
                413: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}


class MlflowError(Exception):
    def __init__(self, error_code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if error_code not in HTTP_STATUS:
            raise ValueError(f"unknown MLflow error code {error_code}")
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.error_code]


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def from_problem(problem: Problem) -> MlflowError:
    return MlflowError(_FROM_STATUS.get(problem.status, "INTERNAL_ERROR"), problem.detail, headers=problem.headers)


def response(error: MlflowError) -> JSONResponse:
    return JSONResponse({"error_code": error.error_code, "message": error.message}, status_code=error.status,
                        headers=error.headers)


def _readable(errors: list[Any]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                     for e in errors[:5]) or "the request is invalid"


class MlflowRoute(APIRoute):
    """An APIRoute whose every error is an MLflow error document."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except MlflowError as exc:
                return response(exc)
            except Problem as exc:
                return response(from_problem(exc))
            except (RequestValidationError, ValidationError) as exc:
                return response(invalid(_readable(list(exc.errors()))))
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return response(MlflowError("INTERNAL_ERROR", "the server failed to answer; the error is logged"))

        return answer
