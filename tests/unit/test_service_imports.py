"""What a service's process imports: not aioboto3 or `cryptography` until it needs them.

aioboto3 and its botocore S3 client (about 23 MiB a process) are opened on first use by
`ObjectStore.boto`; the hot path runs on `LeanS3`. `cryptography` (about 7 MiB) reads a key
file only in a form `modelreg` does not write, and a model signature or a trusted key only
where one is met; the registry's own keys sign and verify with libsodium. An eager import
creeping back in would silently take that memory again; this holds the line."""

from __future__ import annotations

import json
import subprocess
import sys

from services.cli.service_names import SERVICES

HEAVY = ("aioboto3", "aiobotocore", "botocore.client", "cryptography")

PROBE = """
import json, sys
from services.cli.main import _service_factory
heavy, loaded = json.loads(sys.argv[1]), {}
for name in sys.argv[2:]:
    _service_factory(name)
    loaded[name] = [m for m in heavy if sys.modules.get(m) is not None]
print(json.dumps(loaded))
"""


def loaded_by(*services: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), *services],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_kafka_services_do_not_import_aioboto3_or_cryptography() -> None:
    kafka_services = [name for name in SERVICES if name != "api"]
    assert kafka_services  # the probe checks something
    assert loaded_by(*kafka_services) == {name: [] for name in kafka_services}

