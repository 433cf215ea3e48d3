"""The local stack's Kafka identities: a CA, the broker's certificate and SCRAM passwords.

Generated once by `modelreg stack up` into the stack directory's `kafka-auth/` (the folder
0700, every file 0600, never in the repository): `ca.pem` (what clients trust),
`ca-key.pem`, `broker.pem` (the broker's key and certificate chain, a PEM keystore for the
JVM) and `credentials.json` (one SCRAM-SHA-512 password per principal). Principals:
`broker` and `admin` (super users: the broker itself, and the stack's own tooling), one per
service and one per outside role; what each may do is `shared/kafka_acls.py`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.kafka_acls import OUTSIDE_ROLES, SERVICE_PRINCIPALS

BROKER = "broker"
ADMIN = "admin"
SUPER_USERS = (BROKER, ADMIN)
PRINCIPALS: tuple[str, ...] = (*SUPER_USERS, *SERVICE_PRINCIPALS, *OUTSIDE_ROLES)
SASL_MECHANISM = "SCRAM-SHA-512"
CERT_DAYS = 825


@dataclass(frozen=True)
class KafkaAuth:
    """The files of one stack's Kafka identities (see the module docstring)."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.dir / "broker.pem"

    @property
    def credentials_file(self) -> Path:
        return self.dir / "credentials.json"

    def exists(self) -> bool:
        return self.ca_file.exists() and self.broker_keystore.exists() and self.credentials_file.exists()

    def ensure(self, hosts: tuple[str, ...] = ("localhost",), passwords: dict[str, str] | None = None) -> None:
        """Create what is missing (the broker's certificate names `hosts` and 127.0.0.1;
        passwords not given are random); existing files are kept (passwords are in the
        broker's metadata from the first start on)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not (self.ca_file.exists() and self.broker_keystore.exists()):
            ca_key_pem, ca_pem, broker_pem = _certificates(hosts)
            write_private(self.dir / "ca-key.pem", ca_key_pem)
            write_private(self.ca_file, ca_pem)
            write_private(self.broker_keystore, broker_pem)
        stored = self.passwords() if self.credentials_file.exists() else {}
        known = {**stored, **(passwords or {})}
        wanted = {name: known.get(name) or secrets.token_urlsafe(24) for name in PRINCIPALS}
        if wanted != stored:
            write_private(self.credentials_file, json.dumps(wanted, indent=2).encode())

    def passwords(self) -> dict[str, str]:
        return dict(json.loads(self.credentials_file.read_text()))

    def password(self, principal: str) -> str:
        try:
            return self.passwords()[principal]
        except KeyError:
            raise ValueError(f"unknown Kafka principal {principal!r}; one of: {', '.join(PRINCIPALS)}") from None

    def client_env(self, principal: str) -> dict[str, str]:
        """The settings (shared/settings.py) of a client authenticating as `principal`."""
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": SASL_MECHANISM,
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD": self.password(principal),
            "KAFKA_SSL_CAFILE": str(self.ca_file),
        }


def write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the start (no window in which another user could read it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _certificates(hosts: tuple[str, ...]) -> tuple[bytes, bytes, bytes]:
    """A CA, and a broker certificate it signed for 127.0.0.1/localhost: (CA key, CA
    certificate, broker key + certificate chain), all PEM; keys PKCS#8, as the JVM reads them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelreg local stack CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER)]))
        .issuer_name(ca_name).public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            *(x509.DNSName(host) for host in hosts), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    broker_pem = pkcs8(broker_key) + broker_cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    return pkcs8(ca_key), ca_pem, broker_pem
