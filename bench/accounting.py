"""After a fault: is every version accounted for?

One end state for every fault run (the fault tests, the SIGKILL tests and the benchmark's
soak): each version registered became exactly one version (1..n per model), reached the stage
its QA result earns (production in turn when it passed, staging when it did not), each
decision was taken once (one audit record per version and step), nothing was dead-lettered or
parked, the services' consumer lag drained to zero (their own gauge and the groups' committed
offsets), every service is ready again, `modelreg audit verify` finds the chain intact and
`modelreg replay` finds no difference.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from bench.fleet import ROOT, Fleet, wait_all_ready, wait_until
from bench.tap import lag as committed_lag
from shared.settings import Settings

STEPS = ("ingested", "validated", "promoted")


@dataclass(frozen=True)
class Expected:
    prefix: str                                   # every model of the run is named prefix*
    versions: dict[str, int]                      # model -> versions registered
    held: frozenset[tuple[str, int]] = frozenset()  # versions whose QA result failed: they stay in staging

    @property
    def total(self) -> int:
        return sum(self.versions.values())

    @property
    def promoted(self) -> int:
        return self.total - len(self.held)


@dataclass
class EndState:
    problems: list[str] = field(default_factory=list)
    settle_seconds: float | None = None   # until every version reached its stage
    drain_seconds: float | None = None    # ... and until every consumer had caught up

    def require(self) -> None:
        if self.problems:
            raise AssertionError("not every version is accounted for:\n- " + "\n- ".join(self.problems))


async def settled(pool: asyncpg.Pool, expected: Expected) -> bool:
    """Every passing version has been promoted to production (and audited so), every failing
    one is in staging."""
    like = expected.prefix + "%"
    promoted = await pool.fetchval(
        """SELECT count(DISTINCT (name, version)) FROM audit_log
           WHERE name LIKE $1 AND action = 'promoted' AND to_stage = 'production'""", like)
    staged = await pool.fetchval(
        "SELECT count(*) FROM promotion_versions WHERE name LIKE $1 AND stage = 'staging' "
        "AND (name, version) IN (SELECT * FROM unnest($2::text[], $3::int[]))",
        like, [n for n, _ in expected.held], [v for _, v in expected.held])
    return bool(promoted == expected.promoted and staged == len(expected.held))


async def _lag_left(fleet: Fleet, settings: Settings, pool: asyncpg.Pool) -> dict[str, int | None]:
    """What is still to be consumed or sent: per service its lag gauge, the groups' committed
    lag, and the outbox rows not yet published (None: not known right now)."""
    gauges = await asyncio.gather(*(fleet.consumer_lag(name) for name in fleet.services))
    left: dict[str, int | None] = {f"{n} gauge": g for n, g in zip(fleet.services, gauges, strict=True)}
    try:
        left["committed"] = await committed_lag(settings, fleet.services)
    except Exception:  # the admin API not answering yet is "not known", not a failure
        left["committed"] = None
    left["outbox"] = await pool.fetchval("SELECT count(*) FROM outbox")
    return left


async def problems(pool: asyncpg.Pool, expected: Expected) -> list[str]:
    """What the database says is wrong with the run's versions (nothing: [])."""
    like, found = expected.prefix + "%", []
    rows = await pool.fetch("SELECT name, array_agg(version ORDER BY version) AS v, bool_and(status = 'ingested') "
                            "AS ok FROM model_versions WHERE name LIKE $1 GROUP BY name", like)
    versions = {r["name"]: (list(r["v"]), r["ok"]) for r in rows}
    for name, count in expected.versions.items():
        numbers, ok = versions.get(name, ([], True))
        if numbers != list(range(1, count + 1)) or not ok:
            found.append(f"{name}: versions {numbers} (all ingested: {ok}), expected 1..{count}")
    if extra := sorted(set(versions) - set(expected.versions)):
        found.append(f"models nobody registered: {extra}")
    production = await pool.fetch("SELECT name, version, count(*) AS n FROM stage_history WHERE name LIKE $1 "
                                  "AND to_stage = 'production' GROUP BY 1, 2", like)
    promoted = {(r["name"], r["version"]): r["n"] for r in production}
    wrong = sorted(k for k, n in promoted.items() if n != 1 or k in expected.held)
    if wrong:
        found.append(f"promoted to production more than once, or despite a failed QA result: {wrong[:10]}")
    if len(promoted) != expected.promoted:
        found.append(f"{len(promoted)} versions reached production, expected {expected.promoted}")
    not_staged = await pool.fetch(
        "SELECT name, version, stage FROM promotion_versions WHERE (name, version) IN "
        "(SELECT * FROM unnest($1::text[], $2::int[])) AND stage <> 'staging'",
        [n for n, _ in expected.held], [v for _, v in expected.held])
    if not_staged:
        found.append(f"versions with a failed QA result not (only) in staging: {[tuple(r) for r in not_staged][:10]}")
    champions = await pool.fetchval("SELECT count(*) FROM (SELECT name FROM promotion_versions WHERE name LIKE $1 "
                                    "AND stage = 'production' GROUP BY name HAVING count(*) > 1) c", like)
    if champions:
        found.append(f"{champions} models with more than one version in production")
    duplicates = await pool.fetch(
        """SELECT name, version, action, to_stage, count(*) AS n FROM audit_log WHERE name LIKE $1
           AND action = ANY($2::text[]) GROUP BY 1, 2, 3, 4 HAVING count(*) > 1""", like, list(STEPS))
    if duplicates:
        found.append(f"decisions audited more than once: {[tuple(r) for r in duplicates][:10]}")
    ingested = await pool.fetchval("SELECT count(*) FROM audit_log WHERE name LIKE $1 AND action = 'ingested'", like)
    if ingested != expected.total:
        found.append(f"{ingested} 'ingested' audit records, expected {expected.total}")
    dead = await pool.fetch("SELECT service, kind, count(*) FROM dead_letters WHERE key LIKE $1 GROUP BY 1, 2", like)
    if dead:
        found.append(f"dead-lettered: {[tuple(r) for r in dead]}")
    parked = await pool.fetchval("SELECT count(*) FROM outbox_parked WHERE state = 'parked' AND key LIKE $1", like)
    if parked:
        found.append(f"{parked} outbox rows parked")
    return found


def run_cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`modelreg ARGS` as ops run it, against the run's database and topics."""
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def audit_and_replay(env: dict[str, str]) -> list[str]:
    """`modelreg audit verify` and `modelreg replay`, each a problem when it fails."""
    found = []
    verify = run_cli(env, "audit", "verify", "--json")
    if verify.returncode != 0:
        found.append(f"modelreg audit verify exited {verify.returncode}: {(verify.stdout + verify.stderr)[-2000:]}")
    replay = run_cli(env, "replay", "--json")
    if replay.returncode != 0:
        try:
            differences = json.loads(replay.stdout)["differences"]
        except (ValueError, KeyError):
            differences = [(replay.stdout + replay.stderr)[-2000:]]
        found.append(f"modelreg replay exited {replay.returncode}: {differences[:10]}")
    return found


async def account_for(fleet: Fleet, settings: Settings, pool: asyncpg.Pool, expected: Expected,
                      cli_env: dict[str, str], *, timeout: float = 420,
                      progress: Callable[[], Awaitable[str]] | None = None) -> EndState:
    """Wait (at most `timeout` s) for the run to settle and drain, then check its end state.
    `cli_env` is the environment `modelreg` runs with (the run's database, topics, keyring)."""
    state = EndState()
    began = time.monotonic()
    if not await wait_until(lambda: settled(pool, expected), timeout, interval=1.0):
        state.problems.append(f"not settled within {timeout:.0f}s" + (f": {await progress()}" if progress else ""))
    else:
        state.settle_seconds = round(time.monotonic() - began, 1)
    left: dict[str, int | None] = {}

    async def drained() -> bool:
        nonlocal left
        left = await _lag_left(fleet, settings, pool)
        return all(value == 0 for value in left.values())

    if await wait_until(drained, max(60.0, timeout - (time.monotonic() - began)), interval=1.0):
        state.drain_seconds = round(time.monotonic() - began, 1)
    else:
        state.problems.append(f"lag did not drain to zero: {left}")
    try:
        await wait_all_ready(fleet, timeout=60)
    except AssertionError as exc:
        state.problems.append(str(exc))
    if exited := fleet.exited():
        state.problems.append(f"services exited by themselves: {exited}")
    state.problems += await problems(pool, expected)
    state.problems += await asyncio.to_thread(audit_and_replay, cli_env)
    return state
