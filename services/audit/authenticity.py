"""Replay's signature checks, in a process of their own beside the rebuild.

An Ed25519 verification costs about 63 µs, a quarter of what replaying an event costs; done in
the rebuild's process it serialises with the parsing and hashing on one core. A worker process
checks a whole fetch while the rebuild parses it, so a second core does the verifying. (A thread
would not do: libsodium releases the GIL, but the thread needs it back after every call and
waits out the rebuild's switch interval each time.)

A spawned worker imports this module and the program's main module (`services.cli.main`,
about a quarter of a second), not the rebuild's Kafka and database clients.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from shared.keys import Keyring

log = logging.getLogger(__name__)

_keyring: Keyring | None = None  # the worker's, set once by `_start`


def _start(jwks: Mapping[str, Any]) -> None:
    global _keyring
    _keyring = Keyring.from_jwks(jwks)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the replay's to handle: it stops the pool


def _cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def forged(keyring: Keyring, values: Sequence[bytes | None]) -> list[bool]:
    """Per message, whether no key of `keyring` may have signed it. Every fetched message is
    asked about, also those the rebuild will find it cannot parse (it skips those whatever
    this says): one that is not a JSON object, or too deep to canonicalise, counts as forged."""
    flags = []
    for value in values:
        try:
            event = orjson.loads(value) if value is not None else None
            flags.append(not isinstance(event, dict) or keyring.event_problem(event) is not None)
        except (orjson.JSONDecodeError, RecursionError):
            flags.append(True)
    return flags


def _forged_in_worker(values: Sequence[bytes | None]) -> list[bool]:
    assert _keyring is not None, "the worker starts with the keyring"
    return forged(_keyring, values)


class SignatureChecks:
    """Checks batches of messages against a keyring: in one worker process when this machine
    has a core to spare (and can start one), else inline. `submit` starts a check; `outcome`
    awaits it, and checks inline what a worker that died (killed, out of memory) left
    unanswered. Use as a context manager."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._pool: ProcessPoolExecutor | None = None
        if _cores() > 1:
            try:
                # spawn, not fork: the rebuild's process has an event loop and open sockets.
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start, initargs=(keyring.to_jwks(),))
            except (OSError, NotImplementedError) as exc:  # no POSIX semaphores here (some containers)
                log.warning("replay checks signatures in its own process: cannot start a worker (%s)", exc)

    def submit(self, values: Sequence[bytes | None]) -> Future[list[bool]]:
        if self._pool is None:
            done: Future[list[bool]] = Future()
            done.set_result(forged(self.keyring, values))
            return done
        try:
            return self._pool.submit(_forged_in_worker, list(values))  # starts the worker the first time
        except (BrokenProcessPool, OSError):  # it died, or could not start (no memory, no processes left)
            return self._without_worker(values)

    async def outcome(self, checking: Future[list[bool]], values: Sequence[bytes | None]) -> list[bool]:
        """What `submit(values)` found."""
        try:
            return await asyncio.wrap_future(checking)
        except BrokenProcessPool:
            return self._without_worker(values).result()

    def _without_worker(self, values: Sequence[bytes | None]) -> Future[list[bool]]:
        if self._pool is not None:
            log.warning("the replay's signature worker died; checking signatures in this process")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return self.submit(values)

    def __enter__(self) -> SignatureChecks:
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
