"""docker-compose.yml's Kafka: its identities, `server.properties` and start script.

`modelreg stack kafka-auth` writes them into the Kafka container's volume. They are the local
stack's identities (`kafka_auth`) with the broker configuration of `kafka`, which itself
needs `kafka_auth`: this module sits above both so neither imports the other.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from shared.stack.kafka import broker_properties, secured_listeners
from shared.stack.kafka_auth import ADMIN, PRINCIPALS, SASL_MECHANISM, KafkaAuth, write_private


def write_compose_kafka(auth_dir: Path, ca_dir: Path, owner: int | None) -> None:
    """What docker-compose.yml's Kafka container starts from, in `auth_dir` (its volume): the
    CA and broker certificate (for the hosts `kafka` and `localhost`), `server.properties`,
    `start.sh` (formats the storage with every principal's SCRAM credentials, then runs the
    broker) and `admin.properties` (its health check's client config); the CA alone in
    `ca_dir`, the volume the services mount. Passwords come from MODELREG_KAFKA_<NAME>_PASSWORD
    (docker compose reads them from .env); `owner` is the uid the Kafka image runs as."""
    given = {name: os.environ[f"MODELREG_KAFKA_{name.upper()}_PASSWORD"] for name in PRINCIPALS
             if os.environ.get(f"MODELREG_KAFKA_{name.upper()}_PASSWORD")}
    auth = KafkaAuth(auth_dir)
    auth.ensure(hosts=("kafka", "localhost"), passwords=given)
    listeners = secured_listeners({"INTERNAL": ("0.0.0.0:9092", "kafka:9092"),
                                   "EXTERNAL": ("0.0.0.0:29092", "localhost:9092")}, "localhost:9093", auth)
    write_private(auth_dir / "server.properties",
                   broker_properties("/var/lib/kafka/data", "localhost:9093", listeners).encode())
    scram = " ".join(f"--add-scram {shlex.quote(f'{SASL_MECHANISM}=[name={name},password={password}]')}"
                     for name, password in auth.passwords().items())
    write_private(auth_dir / "start.sh", (
        "#!/bin/bash\nset -euo pipefail\n"
        f"/opt/kafka/bin/kafka-storage.sh format --standalone --ignore-formatted -t \"$CLUSTER_ID\" "
        f"-c {auth_dir}/server.properties {scram} >/dev/null\n"
        f"exec /opt/kafka/bin/kafka-server-start.sh {auth_dir}/server.properties\n").encode())
    write_private(auth_dir / "admin.properties", "\n".join([
        "security.protocol=SASL_SSL", f"sasl.mechanism={SASL_MECHANISM}",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN}" password="{auth.password(ADMIN)}";',
        "ssl.truststore.type=PEM", f"ssl.truststore.location={auth.ca_file}", ""]).encode())
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "ca.pem").write_bytes(auth.ca_file.read_bytes())
    os.chmod(ca_dir / "ca.pem", 0o644)  # a CA certificate is public
    if owner is not None:
        for path in [auth_dir, *auth_dir.iterdir()]:
            os.chown(path, owner, owner)
