"""A small in-process cache of each model's champion for the production endpoint.

Correctness first: an entry is served only while a LISTEN connection is up, so the
`modelreg_champion` notification (sent by a trigger on view_models whenever a champion changes,
at commit) drops it; a lookup that raced with a notification is not stored (a generation
counter), and every entry also expires after `ttl` seconds, which bounds staleness should the
listening connection die silently. Without a listener, every lookup goes to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "modelreg_champion"


class ChampionCache:
    def __init__(self, dsn: str, *, ttl: float = 5.0, max_entries: int = 10_000, check_every: float = 5.0) -> None:
        self._dsn = dsn
        self._ttl = ttl
        self._max = max_entries
        self._check_every = check_every
        self._rows: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._generation = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.hits = 0

    @property
    def live(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch(), name="api-champion-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._disconnect()

    async def _connect(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5)
            await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(lambda _conn: self._drop_all())
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("champion cache off (cannot LISTEN: %s)", exc)
            return
        self._drop_all()
        self._conn = conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._drop_all()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    async def _watch(self) -> None:
        """Ping the listening connection; on silence drop everything and reconnect."""
        while True:
            await asyncio.sleep(self._check_every)
            if self.live:
                try:
                    assert self._conn is not None
                    await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=2)
                    continue
                except (TimeoutError, Exception):
                    await self._disconnect()
            await self._connect()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._generation += 1
        self._rows.pop(str(payload), None)  # a NOTIFY payload (the model's name) is always a str

    def _drop_all(self) -> None:
        self._generation += 1
        self._rows.clear()

    async def lookup(self, name: str, load: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any] | None:
        now = time.monotonic()
        if self.live:
            found = self._rows.get(name)
            if found is not None and found[0] > now:
                self.hits += 1
                self._rows.move_to_end(name)
                return found[1]
        generation = self._generation
        row = await load()
        if row is not None and self.live and generation == self._generation:
            self._rows[name] = (now + self._ttl, row)
            self._rows.move_to_end(name)
            while len(self._rows) > self._max:
                self._rows.popitem(last=False)
        return row
