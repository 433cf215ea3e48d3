"""Who is calling an MLflow route: a modelreg token, sent the two ways MLflow's client sends
credentials. `MLFLOW_TRACKING_TOKEN` arrives as `Authorization: Bearer <token>`;
`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` as HTTP Basic, where the password is the
token (the username is free: the token's name is the identity that goes on record).
Roles and model scopes are the HTTP API's (`services/api/auth.py`).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from fastapi import Request

from .. import auth
from ..auth import Identity
from ..resources import resources_of
from .errors import MlflowError


class CredentialsError(ValueError):
    pass


def token_of(authorization: str | None) -> str | None:
    """The token in an Authorization header (Bearer, or Basic's password); None: no header.
    CredentialsError says what is wrong with a malformed one."""
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError("Basic credentials are not base64 of 'username:password'") from None
        _, colon, password = decoded.partition(":")
        if not colon or not password:
            raise CredentialsError("Basic credentials need a password: the modelreg token "
                                   "(MLFLOW_TRACKING_PASSWORD)")
        return password
    raise CredentialsError("send a modelreg token as `Authorization: Bearer <token>` (MLFLOW_TRACKING_TOKEN) "
                           "or as the Basic password (MLFLOW_TRACKING_PASSWORD)")


def _unauthenticated(message: str) -> MlflowError:
    return MlflowError("UNAUTHENTICATED", message, headers={"WWW-Authenticate": 'Bearer realm="modelreg"'})


async def caller(request: Request) -> Identity | None:
    """The live token's identity, None without credentials; a bad, revoked or expired token is
    refused, never ignored."""
    try:
        token = token_of(request.headers.get("authorization"))
    except CredentialsError as exc:
        raise _unauthenticated(str(exc)) from None
    if token is None:
        return None
    identity = await auth.lookup(resources_of(request).pool, token)
    if identity is None:
        raise _unauthenticated("the token is unknown or revoked")
    if identity.expired(datetime.now(UTC)):
        assert identity.expires_at is not None
        raise _unauthenticated(f"token {identity.name!r} expired at {identity.expires_at.astimezone(UTC).isoformat()}")
    return identity


def check_scope(identity: Identity | None, model: str) -> None:
    if identity is not None and not identity.may_touch(model):
        raise MlflowError("PERMISSION_DENIED", f"token {identity.name!r} is limited to models "
                                               f"{', '.join(identity.models)}; {model[:128]!r} is not one of them")


def may_read(request: Request, identity: Identity | None, model: str | None = None) -> None:
    if identity is None and not resources_of(request).api.open_reads:
        raise _unauthenticated("reads need a token (MODELREG_API_OPEN_READS is off): set MLFLOW_TRACKING_TOKEN")
    if model is not None:
        check_scope(identity, model)


def must(identity: Identity | None, model: str | None, *actions: auth.Action) -> Identity:
    """The identity, if its role allows one of `actions` on `model`; else the MLflow error."""
    wanted = " or ".join(f"role {auth.ROLE_FOR[a]}" for a in actions)
    if identity is None:
        raise _unauthenticated(f"this needs a token with {wanted} (or admin): set MLFLOW_TRACKING_TOKEN")
    if not any(auth.allows(identity.role, action) for action in actions):
        raise MlflowError("PERMISSION_DENIED", f"token {identity.name!r} has role {identity.role}; "
                                               f"this needs {wanted} (or admin)")
    if model is not None:
        check_scope(identity, model)
    return identity
