"""What the API's handlers use; opened in the app's lifespan and closed in its `finally`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from fastapi import Request

from shared.events import Environment
from shared.keys import Keyring
from shared.policy import Policy
from shared.sdk import Progress
from shared.settings import Settings
from shared.storage import ObjectStore

from .cache import ChampionCache
from .settings import ApiSettings


class Publisher(Protocol):
    """The SDK calls the API's writes use (`shared.sdk.Registry`, or a fake in tests)."""

    async def register(self, name: str, artifact: str | Path, *, version: int | None = None,
                       metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
                       tags: Mapping[str, str] | None = None, dataset: Mapping[str, str] | None = None,
                       signature: Mapping[str, Any] | None = None, description: str | None = None,
                       registered_by: str | None = None, run_id: str | None = None,
                       format: str | None = None, progress: Progress | None = None) -> uuid.UUID: ...

    async def evaluate(self, name: str, version: int, *, suite: str, metrics: Mapping[str, float],
                       environment: Environment = "offline", passed: bool | None = None,
                       dataset: Mapping[str, str] | None = None, evaluator: str | None = None,
                       correlationid: uuid.UUID | None = None) -> uuid.UUID: ...

    # to_stage: the request's text (PromotionRequestedData validates it; the SDK declares a Stage)
    async def request_promotion(self, name: str, version: int, *, to_stage: str, actor: str,
                                reason: str) -> uuid.UUID: ...


@dataclass
class ApiResources:
    settings: Settings
    api: ApiSettings
    pool: asyncpg.Pool
    store: ObjectStore
    registry: Publisher
    policy: Policy
    cursor_key: bytes
    cache: ChampionCache
    keyring: Keyring  # the services' public keys, served as JWKS for deployment systems


def resources_of(request: Request) -> ApiResources:
    return request.app.state.resources  # type: ignore[no-any-return]
