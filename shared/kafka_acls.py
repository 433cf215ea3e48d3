"""Who may read and write which topic: the Kafka ACLs of the registry's principals.

`acl_plan(prefix)` is the whole table as data (a pure function, unit-tested); `apply_acls`
creates it on a cluster through an admin (super user) connection. ACLs name topics and
groups LITERALLY, with the deployment's topic prefix: a PREFIXED pattern cannot say "only
model.registered" when the prefix varies, so a deployment (or a test run) with another
prefix applies the table for its own prefix. `infra/kafka-acls.sh` is the same table for
an existing cluster, with Kafka's own command-line tool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from shared.events import TOPICS
from shared.keys import EVERY_SERVICE_EVENT_TYPES, SERVICE_EVENT_TYPES

# What each service consumes (its handlers in services/*/app.py).
SERVICE_READS: dict[str, tuple[str, ...]] = {
    "ingest": ("model.registered",),
    "validation": ("model.ingested",),
    "promotion": ("model.ingested", "model.validated", "model.rejected", "metrics.evaluated",
                  "promotion.requested", "model.archived", "model.restored"),
    # promotion.requested: an approver's request to restore an archived version is archival's.
    "archival": ("model.ingested", "model.promoted", "model.demoted", "model.rejected", "promotion.requested"),
    "audit": ("registry.audit", "registry.dlq"),
    "api": (),
    # Endpoints may ask for any event type (services/webhooks): it reads every topic.
    "webhooks": TOPICS,
}
# The audit writer performs dead-letter redrives: it republishes a record's original bytes to
# the topic a service refused it on (services/audit/dlq.py says why it, and not ops, does).
REDRIVE_TOPICS: tuple[str, ...] = tuple(dict.fromkeys(t for reads in SERVICE_READS.values() for t in reads))
# The API publishes what people ask for over HTTP (register, evaluate, request promotion);
# those are outside producers' events, attributed to the caller's token.
API_PUBLISHES: tuple[str, ...] = ("model.registered", "metrics.evaluated", "promotion.requested")
SERVICE_PRINCIPALS: tuple[str, ...] = tuple(SERVICE_READS)

# Outside roles: what a training pipeline, a QA system, ops and a read-only observer may do.
OUTSIDE_ROLE_WRITES: dict[str, tuple[str, ...]] = {
    "pipeline": ("model.registered",),
    "qa": ("metrics.evaluated",),
    "ops": ("promotion.requested",),
    "reader": (),
}
OUTSIDE_ROLE_READS: dict[str, tuple[str, ...]] = {
    "pipeline": (),
    "qa": ("qa.requested",),  # QA systems are asked to run their suites there
    "ops": (),
    "reader": TOPICS,
}
OUTSIDE_ROLES: tuple[str, ...] = tuple(OUTSIDE_ROLE_WRITES)

ResourceKind = Literal["topic", "group", "transactional_id"]
Operation = Literal["READ", "WRITE", "DESCRIBE"]
PatternKind = Literal["LITERAL", "PREFIXED"]


@dataclass(frozen=True, order=True)
class AclRule:
    """ALLOW `principal` to do `operation` on a topic, group or transactional id (any host)."""

    principal: str  # the SCRAM user name; Kafka's principal is User:<name>
    resource: ResourceKind
    name: str
    operation: Operation
    pattern: PatternKind = "LITERAL"


def service_writes(service: str) -> tuple[str, ...]:
    own = SERVICE_EVENT_TYPES.get(service, ()) + (API_PUBLISHES if service == "api" else ()) \
        + (REDRIVE_TOPICS if service == "audit" else ())
    return tuple(dict.fromkeys(own + EVERY_SERVICE_EVENT_TYPES))


def service_group(prefix: str, service: str) -> str:
    """A service's consumer group, as `Settings.group_id` names it."""
    return f"{prefix}modelreg-{service}"


def outbox_transactional_id(prefix: str, service: str) -> str:
    """The transactional id a service's outbox relay publishes with (shared/outbox.py)."""
    return f"{prefix}modelreg-outbox-{service}"


def role_group_prefix(prefix: str, role: str) -> str:
    """Consumer groups an outside role may use: `<prefix><role>-anything`."""
    return f"{prefix}{role}-"


def acl_plan(prefix: str = "") -> list[AclRule]:
    """Every ACL of the registry's principals for topics named `<prefix><topic>`. Each
    principal may DESCRIBE every topic (metadata: services check the topics exist at start)."""
    rules: set[AclRule] = set()

    def topics(principal: str, operation: Operation, names: Iterable[str]) -> None:
        rules.update(AclRule(principal, "topic", f"{prefix}{t}", operation) for t in names)

    for service in SERVICE_PRINCIPALS:
        topics(service, "DESCRIBE", TOPICS)
        topics(service, "READ", SERVICE_READS[service])
        topics(service, "WRITE", service_writes(service))
        if SERVICE_READS[service]:
            rules.add(AclRule(service, "group", service_group(prefix, service), "READ"))
        rules.update(AclRule(service, "transactional_id", outbox_transactional_id(prefix, service), operation)
                     for operation in ("WRITE", "DESCRIBE"))
    for role in OUTSIDE_ROLES:
        topics(role, "DESCRIBE", TOPICS)
        topics(role, "READ", OUTSIDE_ROLE_READS[role])
        topics(role, "WRITE", OUTSIDE_ROLE_WRITES[role])
        if OUTSIDE_ROLE_READS[role]:
            rules.add(AclRule(role, "group", role_group_prefix(prefix, role), "READ", "PREFIXED"))
    # `modelreg replay` (as the reader) holds audit_log to what the audit writer has committed:
    # it reads that group's offsets, which DESCRIBE allows without joining or committing.
    rules.add(AclRule("reader", "group", service_group(prefix, "audit"), "DESCRIBE"))
    return sorted(rules)


def may_write(principal: str, topic: str, prefix: str = "") -> bool:
    return AclRule(principal, "topic", f"{prefix}{topic}", "WRITE") in set(acl_plan(prefix))


class AclRefusedError(RuntimeError):
    """The cluster refused to create ACLs (the client is no super user)."""


def _kafka_python_acl(rule: AclRule) -> Any:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    return ACL(principal=f"User:{rule.principal}", host="*", operation=ACLOperation[rule.operation],
               permission_type=ACLPermissionType.ALLOW,
               resource_pattern=ResourcePattern(ResourceType[rule.resource.upper()], rule.name,
                                                ACLResourcePatternType[rule.pattern]))


def _admin(admin_settings: Any) -> Any:
    from kafka.admin import KafkaAdminClient

    from shared.kafka_security import kafka_client_options

    # kafka-python logs every connection step at INFO; only its problems matter here.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger("kafka").getEffectiveLevel()))
    return KafkaAdminClient(client_id="modelreg-acls", **kafka_client_options(admin_settings))


def _create(admin_settings: Any, rules: list[AclRule]) -> None:
    admin = _admin(admin_settings)
    try:
        result = admin.create_acls([_kafka_python_acl(r) for r in rules])
        if result["failed"]:
            # kafka-python 2 lists (acl, error) pairs, 3 the error types
            first = result["failed"][0]
            error = first[-1] if isinstance(first, tuple) else first
            name = getattr(error, "__name__", type(error).__name__)
            raise AclRefusedError(f"Kafka refused {len(result['failed'])} of {len(rules)} ACLs ({name}): "
                                  f"is {admin_settings.kafka_sasl_username or 'this client'} a super user?")
    finally:
        admin.close()


def _delete(admin_settings: Any, rules: list[AclRule]) -> None:
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType

    admin = _admin(admin_settings)
    try:
        admin.delete_acls([ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                                     permission_type=ACLPermissionType.ANY,
                                     resource_pattern=_kafka_python_acl(r).resource_pattern)
                           for r in {AclRule("", r.resource, r.name, "READ", r.pattern) for r in rules}])
    finally:
        admin.close()


async def apply_acls(admin_settings: Any, prefix: str = "") -> None:
    """Create the ACL table for `prefix` (creating an existing ACL is no error), connecting
    with `admin_settings`, which must be a super user's."""
    await asyncio.to_thread(_create, admin_settings, acl_plan(prefix))


async def remove_acls(admin_settings: Any, prefix: str) -> None:
    """Delete every ACL on the topics and groups of `prefix` (a test run's, at its end)."""
    await asyncio.to_thread(_delete, admin_settings, acl_plan(prefix))


_STRIMZI_KINDS = {"transactional_id": "transactionalId"}


def strimzi_users(prefix: str = "") -> str:
    """The ACL table as Strimzi KafkaUser resources (infra/k8s/strimzi/kafka-users.yaml is
    this, below its header): `python -m shared.kafka_acls --strimzi` regenerates them."""
    order = {"DESCRIBE": 0, "READ": 1, "WRITE": 2}
    documents = []
    for principal in (*SERVICE_PRINCIPALS, *OUTSIDE_ROLES):
        resources: dict[tuple[str, str, str], list[str]] = {}
        for rule in acl_plan(prefix):
            if rule.principal == principal:
                resources.setdefault((rule.resource, rule.name, rule.pattern), []).append(rule.operation)
        acls = []
        for (kind, name, pattern), operations in sorted(resources.items()):
            ops = ", ".join(op.capitalize() for op in sorted(operations, key=order.__getitem__))
            acls.append(f"      - resource:\n          type: {_STRIMZI_KINDS.get(kind, kind)}\n          name: {name}\n"
                        f"          patternType: {pattern.lower()}\n        operations: [{ops}]\n")
        documents.append(
            "---\napiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaUser\nmetadata:\n"
            f"  name: {principal}\n  labels:\n    strimzi.io/cluster: modelreg-kafka\n"
            "    app.kubernetes.io/part-of: modelreg\nspec:\n  authentication:\n    type: scram-sha-512\n"
            "  authorization:\n    type: simple\n    acls:\n" + "".join(acls))
    return "".join(documents)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--strimzi"]:
        sys.exit("usage: python -m shared.kafka_acls --strimzi  (prints the Strimzi KafkaUser resources)")
    sys.stdout.write(strimzi_users())
