"""One service process: its resources, its Kafka subscription and its outbox relay.

`ServiceApp` is built, not imported: nothing connects until `start()`, so tests point it at
the infrastructure they started and the CLI at the one in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.broker import ensure_topics, make_broker, subscribe
from shared.consumer import BatchProcessor, ServiceHandlers
from shared.db import create_pool, migrate
from shared.outbox import OutboxRelay
from shared.policy import Policy, load_policy
from shared.settings import Settings
from shared.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What a service's handlers may use; owned and closed by the `ServiceApp`."""

    settings: Settings
    pool: asyncpg.Pool
    store: ObjectStore
    policy: Policy


ServiceBuilder = Callable[[Resources], ServiceHandlers]


class ServiceApp:
    def __init__(self, settings: Settings, name: str, build: ServiceBuilder) -> None:
        self.settings = settings
        self.name = name
        self._build = build
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self.processor: BatchProcessor | None = None
        self.relay: OutboxRelay | None = None
        self.resources: Resources | None = None

    async def start(self) -> None:
        settings = self.settings
        try:
            policy = load_policy(settings.policy_file)  # a bad policy stops the service here
            await migrate(settings.dsn)
            await ensure_topics(settings)
            pool = await create_pool(settings.dsn)
            self._stack.push_async_callback(pool.close)
            store = await self._stack.enter_async_context(ObjectStore(settings))
            await store.ensure_bucket()
            self.resources = Resources(settings, pool, store, policy)
            handlers = self._build(self.resources)

            broker = make_broker(settings, client_id=f"modelreg-{self.name}")

            async def send(topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
                return await broker.publish(value, topic, key=key.encode() if key else None,
                                            headers=headers, no_confirm=True)

            self.relay = OutboxRelay(settings.dsn, self.name, send, settings.topic)
            self.processor = BatchProcessor(pool, handlers, on_commit=self.relay.wake)
            subscribe(broker, settings, self.processor, handlers.topics)
            await broker.start()
            self._stack.push_async_callback(broker.stop)
            self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{self.name}-outbox"))
            for index, job in enumerate(handlers.background):
                self._tasks.append(asyncio.create_task(job(), name=f"{self.name}-background-{index}"))
            log.info("%s started: consuming %s", self.name, ", ".join(handlers.topics))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> ServiceApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_until_signalled(self) -> None:
        """Run until SIGINT or SIGTERM; a graceful stop commits what is in flight."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            await stop.wait()
            log.info("%s stopping", self.name)
