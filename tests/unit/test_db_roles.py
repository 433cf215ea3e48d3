"""Per-service PostgreSQL roles (migration 0009, shared/db.py): no servers.

The grants are checked against the SQL each service's code runs, so a new table or a new
statement without its grant fails here, not in production."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from shared.db import load_migrations, service_role
from shared.keys import SERVICES

ROOT = Path(__file__).resolve().parents[2]
# Code that runs as the login user (CLI commands), not in the service's pool.
NOT_IN_THE_POOL = {"services/audit/replay.py"}

# GRANT privileges (optionally on columns) ON tables TO role; sequences are not tables.
_GRANT = re.compile(r"GRANT\s+((?:[A-Z]+(?:\s*\([\w,\s]+\))?\s*,?\s*)+?)\s+ON\s+(?!SEQUENCE)(?:TABLE\s+)?"
                    r"([\w,\s]+?)\s+TO\s+(\w+)\s*;", re.S)
_STATEMENTS = {
    "INSERT": re.compile(r"\bINSERT\s+INTO\s+(\w+)"),
    "UPDATE": re.compile(r"\bUPDATE\s+(\w+)\s+(?:AS\s+\w+\s+)?SET\b"),
    "DELETE": re.compile(r"\bDELETE\s+FROM\s+(\w+)"),
    "SELECT": re.compile(r"\b(?:FROM|JOIN)\s+(\w+)"),
}


def _tables() -> set[str]:
    sql = "\n".join(m.sql for m in load_migrations())
    return set(re.findall(r"CREATE TABLE (\w+)", sql))


def _grants() -> dict[str, set[tuple[str, str]]]:
    """role -> {(privilege, table)}, from every migration (a column grant counts for its table)."""
    sql = "\n".join(m.sql for m in load_migrations())
    granted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for privileges, tables, role in _GRANT.findall(sql):
        for privilege in re.findall(r"[A-Z]+", re.sub(r"\([^)]*\)", "", privileges)):
            for table in (t.strip() for t in tables.split(",")):
                granted[role].add((privilege, table))
    return granted


def _used(service: str) -> set[tuple[str, str]]:
    """(privilege, table) of every statement in `service`'s code on a registry table."""
    tables = _tables()
    used = set()
    for path in (ROOT / "services" / service).rglob("*.py"):
        if str(path.relative_to(ROOT)) in NOT_IN_THE_POOL:
            continue
        text = path.read_text()
        for privilege, pattern in _STATEMENTS.items():
            used |= {(privilege, t) for t in pattern.findall(text) if t in tables}
    return used


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_granted_what_its_code_does(service: str) -> None:
    grants = _grants()
    allowed = grants[f"modelreg_{service}"] | grants["modelreg_service"]
    missing = sorted(_used(service) - allowed)
    assert not missing, f"migration 0009 grants modelreg_{service} none of {missing}"


def test_the_audit_writer_only_appends_and_the_api_writes_only_its_tokens() -> None:
    grants = _grants()
    assert {p for p, t in grants["modelreg_audit"] if t == "audit_log"} == {"SELECT", "INSERT"}
    api_writes = {t for p, t in grants["modelreg_api"] if p != "SELECT"}
    assert {"api_tokens", "api_secrets"} <= api_writes
    services_write = {t for role in ("modelreg_ingest", "modelreg_validation", "modelreg_promotion",
                                     "modelreg_archival") for p, t in grants[role] if p != "SELECT"}
    assert not api_writes & (services_write | {"audit_log", "audit_chain_head"} | {
        t for t in _tables() if t.startswith("view_")})
    writers = {role for role, rows in grants.items() for p, t in rows if t == "promotion_versions" and p != "SELECT"}
    assert writers == {"modelreg_promotion"}


def test_the_role_a_pool_acts_as() -> None:
    assert service_role(None, "ingest") == "modelreg_ingest"
    assert service_role("reporting", "api") == "reporting"
    assert service_role("none", "api") is None
