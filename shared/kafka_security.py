"""How every Kafka client of the registry connects: one place for the security options.

`kafka_client_options(settings)` is what aiokafka's producer, consumer and admin client (and
kafka-python's, which take the same keyword names) are built with; `faststream_security`
turns the same options into FastStream's `security=` object. A client that does not go
through these would connect unauthenticated, so nothing else builds Kafka options.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)

_warned_unauthenticated = False


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient (and kafka-python's)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers,
                               "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.kafka_sasl_username and settings.kafka_sasl_password  # checked by Settings
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    warn_if_unauthenticated(settings)
    return options



def reader_options(settings: Settings) -> dict[str, Any]:
    """What a consumer of the registry's topics connects with: the client options, reading
    only committed records (the outbox relays publish in Kafka transactions: shared/outbox.py)."""
    return {**kafka_client_options(settings), "isolation_level": "read_committed"}

def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS that checks the broker's certificate (against KAFKA_SSL_CAFILE, else the system's
    CAs) and its host name, presenting a client certificate when one is configured."""
    try:
        context = ssl.create_default_context(
            cafile=_readable("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile))
        if settings.kafka_ssl_certfile and settings.kafka_ssl_keyfile:
            context.load_cert_chain(_readable_file("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
                                    _readable_file("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile))
    except ssl.SSLError as exc:
        raise SettingsError(f"KAFKA_SSL_*: the CA, certificate or key file is not usable PEM: {exc}") from None
    return context


def _readable(variable: str, path: Path | None) -> str | None:
    return None if path is None else _readable_file(variable, path)


def _readable_file(variable: str, path: Path) -> str:
    if not path.is_file():
        raise SettingsError(f"{variable}: {path} is not a readable file")
    return str(path)


def faststream_security(settings: Settings) -> Any:
    """The same options as FastStream's `KafkaBroker(security=...)` object (None: PLAINTEXT)."""
    from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

    options = kafka_client_options(settings)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=options["ssl_context"])
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256,
            "SCRAM-SHA-512": SASLScram512}[options["sasl_mechanism"]]
    return sasl(options["sasl_plain_username"], options["sasl_plain_password"],
                ssl_context=options.get("ssl_context"), use_ssl=protocol == "SASL_SSL")


def unauthenticated(settings: Settings) -> bool:
    """Whether the broker cannot tell who this client is (no SASL, no client certificate)."""
    protocol = settings.kafka_security_protocol
    return protocol == "PLAINTEXT" or (protocol == "SSL" and not settings.kafka_ssl_certfile)


def warn_if_unauthenticated(settings: Settings) -> None:
    """Once per process: an unauthenticated client works against an open cluster, but anyone
    who can reach that cluster can forge the registry's events."""
    global _warned_unauthenticated
    if _warned_unauthenticated or not unauthenticated(settings):
        return
    _warned_unauthenticated = True
    log.warning("Kafka: connecting with KAFKA_SECURITY_PROTOCOL=%s, unauthenticated: anyone who "
                "can reach %s can forge the registry's events; use SASL_SSL (see `modelreg stack "
                "credentials ROLE`)", settings.kafka_security_protocol, settings.kafka_bootstrap_servers)
