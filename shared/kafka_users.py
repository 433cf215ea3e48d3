"""SCRAM users a running Kafka lacks: a principal added after the cluster was formatted.

A fresh local stack formats Kafka with every principal's SCRAM credential; one formatted
before a principal existed (a new service) does not know it, and that service could not
connect. `ensure_scram_users` adds the missing ones through an admin (super user) connection;
existing users keep their credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

SCRAM_ITERATIONS = 8192


def missing_users(wanted: Mapping[str, str], known: set[str]) -> dict[str, str]:
    """The users of `wanted` (name -> password) the cluster does not know yet."""
    return {name: password for name, password in wanted.items() if name not in known}


def _ensure(admin_settings: Any, passwords: Mapping[str, str]) -> list[str]:
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    from shared.kafka_acls import _admin

    admin = _admin(admin_settings)
    try:
        described = admin.describe_user_scram_credentials(list(passwords))
        known = {name for name, info in described.items()
                 if not (info or {}).get("error") and (info or {}).get("credential_infos")}
        todo = missing_users(passwords, known)
        if todo:
            failed = {name: error for name, error in admin.alter_user_scram_credentials([
                UserScramCredentialUpsertion(name, ScramMechanism.SCRAM_SHA_512, password, SCRAM_ITERATIONS)
                for name, password in todo.items()]).items() if error}
            if failed:
                raise RuntimeError(f"Kafka refused SCRAM credentials for {', '.join(sorted(failed))}: "
                                   f"{next(iter(failed.values()))}")
        return sorted(todo)
    finally:
        admin.close()


def add_missing_scram_users(admin_settings: Any, passwords: Mapping[str, str]) -> list[str]:
    """Create the SCRAM-SHA-512 users of `passwords` the cluster lacks; returns their names."""
    return _ensure(admin_settings, dict(passwords))


async def ensure_scram_users(admin_settings: Any, passwords: Mapping[str, str]) -> list[str]:
    """`add_missing_scram_users` from async code."""
    return await asyncio.to_thread(_ensure, admin_settings, dict(passwords))
