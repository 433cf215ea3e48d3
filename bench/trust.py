"""What signed events cost: CPU per version for signing what the services emit and verifying
what they consume, on the code the services run (`shared.signing`).

A version's life to production emits the events listed in `LIFE`; each is signed once (by the
outbox) and verified once per pipeline service that consumes it (`shared.kafka_acls.SERVICE_READS`):
the services whose CPU the throughput phase measures, beside which the cost is set. The webhooks
service may read every topic, but checks only the event types an active endpoint subscribes to
(none in the benchmark); what an endpoint on every type would add is reported apart. The events
are the contract's examples (`schemas/examples`), the sizes the services really emit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.pipeline import cpu_ms_per_version
from bench.resources import SERVICES
from shared import signing
from shared.events import CATALOGUE
from shared.kafka_acls import SERVICE_READS
from shared.keys import Keyring, SigningKey
from shared.schemagen import example

# Internal events of one version's life from registration to production (the QA result and the
# registration itself are outside events: verified only when signed).
LIFE: tuple[str, ...] = (
    "model.ingested", "registry.audit",                       # ingest
    "model.validated", "qa.requested", "registry.audit",      # validation
    "model.promoted", "registry.audit",                       # promotion: to staging
    "model.promoted", "registry.audit",                       # promotion: to production
)
PRODUCER = {"model.ingested": "ingest", "model.validated": "validation", "qa.requested": "validation",
            "model.promoted": "promotion", "registry.audit": "promotion"}


def _consumers(topic: str, services: tuple[str, ...] = SERVICES) -> int:
    """How many of `services` (by default those whose CPU the throughput phase measures) read `topic`."""
    return sum(topic in SERVICE_READS[service] for service in services)


def measure(rounds: int = 2000) -> dict[str, Any]:
    keys = {service: SigningKey.generate(service) for service in set(PRODUCER.values())}
    keyring = Keyring(key.public() for key in keys.values())
    unsigned = {t: json.dumps({k: v for k, v in example(CATALOGUE[t]).items()
                               if k not in ("signature", "signingkey")}).encode() for t in set(LIFE)}
    signed = {t: keys[PRODUCER[t]].sign_event_bytes(unsigned[t]) for t in set(LIFE)}
    started = time.process_time()
    for _ in range(rounds):
        for topic in LIFE:  # what the outbox does for each row (shared.signing.sign_value)
            keys[PRODUCER[topic]].sign_event_bytes(unsigned[topic])
    sign_seconds = (time.process_time() - started) / rounds
    started = time.process_time()
    verifications = 0
    for _ in range(rounds):
        for topic in LIFE:
            for _consumer in range(_consumers(topic)):
                problem, _sender = signing.check(keyring, topic, signed[topic])
                assert problem is None, problem
                verifications += 1
    verify_seconds = (time.process_time() - started) / rounds
    per_round = verifications // rounds
    verify_us = verify_seconds / per_round * 1e6
    webhooks = sum(_consumers(topic, ("webhooks",)) for topic in LIFE)
    return {
        "events_signed_per_version": len(LIFE),
        "verifications_per_version": per_round,
        "sign_us_per_event": round(sign_seconds / len(LIFE) * 1e6, 1),
        "verify_us_per_event": round(verify_us, 1),
        "cpu_ms_per_version": round((sign_seconds + verify_seconds) * 1e3, 3),
        # A webhook endpoint subscribed to every event type: webhooks checks each event too.
        "webhooks_all_types_verifications_per_version": webhooks,
        "webhooks_all_types_cpu_ms_per_version": round(webhooks * verify_us / 1e3, 3),
    }


async def run(ctx: Any, results: dict[str, Any]) -> dict[str, Any]:
    figures = measure()
    pipeline_ms = cpu_ms_per_version(results.get("throughput") or {}, ctx.config.versions)
    if pipeline_ms:
        figures["pipeline_cpu_ms_per_version"] = pipeline_ms
        figures["share_of_pipeline_cpu_percent"] = round(figures["cpu_ms_per_version"] / pipeline_ms * 100, 1)
    ctx.log(f"trust: signing {figures['sign_us_per_event']} µs/event, verifying {figures['verify_us_per_event']} "
            f"µs/event: {figures['cpu_ms_per_version']} CPU ms per version"
            + (f" ({figures['share_of_pipeline_cpu_percent']}% of the pipeline's)" if "share_of_pipeline_cpu_percent"
               in figures else ""))
    return figures
