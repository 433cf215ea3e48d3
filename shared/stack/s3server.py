"""The local stack's S3 API server: moto in server mode, with its objects kept on disk.

moto holds objects in memory. So that data survives `stack down`/`stack up`, this wrapper
writes every bucket's objects (body, content type, metadata, tags, storage class) to the
snapshot directory when it is stopped with SIGTERM, and loads them back when it starts. It
talks to moto only through the S3 API, so moto's internals can change under it. A SIGKILL
loses what changed since the last start: this is a development server.

It is also an INSECURE one: moto checks no request signatures and no bucket policies, so any
credential (the publishers' too) can write `artifacts/`. The stack uses it only where
versitygw cannot be built, and says so at every start.

    python -m shared.stack.s3server --port 9000 --data .modelreg/s3
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

log = logging.getLogger("modelreg.s3server")


def _client(port: int) -> Any:
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="snapshot", aws_secret_access_key="snapshot",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def _object_dir(root: Path, bucket: str, key: str) -> Path:
    return root / bucket / urllib.parse.quote(key, safe="")


def save(port: int, root: Path) -> int:
    """Write every object to `root` (atomically: a new tree replaces the old)."""
    s3 = _client(port)
    staging = root.with_name(root.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    count = 0
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        (staging / name).mkdir()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                key = item["Key"]
                target = _object_dir(staging, name, key)
                target.mkdir(parents=True)
                response = s3.get_object(Bucket=name, Key=key)
                with open(target / "body", "wb") as out:
                    for chunk in response["Body"].iter_chunks(1024 * 1024):
                        out.write(chunk)
                tags = s3.get_object_tagging(Bucket=name, Key=key).get("TagSet", [])
                (target / "meta.json").write_text(json.dumps({
                    "key": key,
                    "content_type": response.get("ContentType"),
                    "metadata": response.get("Metadata", {}),
                    "storage_class": item.get("StorageClass", "STANDARD"),
                    "tags": tags,
                }))
                count += 1
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return count


def load(port: int, root: Path) -> int:
    if not root.exists():
        return 0
    s3 = _client(port)
    count = 0
    for bucket_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket_dir.name)
        for object_dir in sorted(p for p in bucket_dir.iterdir() if p.is_dir()):
            meta = json.loads((object_dir / "meta.json").read_text())
            extra: dict[str, Any] = {"Metadata": meta.get("metadata") or {}}
            if meta.get("content_type"):
                extra["ContentType"] = meta["content_type"]
            if meta.get("storage_class") and meta["storage_class"] != "STANDARD":
                extra["StorageClass"] = meta["storage_class"]
            if meta.get("tags"):
                extra["Tagging"] = urllib.parse.urlencode({t["Key"]: t["Value"] for t in meta["tags"]})
            with open(object_dir / "body", "rb") as body:
                s3.upload_fileobj(body, bucket_dir.name, meta["key"], ExtraArgs=extra)
            count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, help="written once restored and serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from moto.server import ThreadedMotoServer

    from shared.stack.s3 import INSECURE_FALLBACK

    log.warning(INSECURE_FALLBACK)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    log.info("restored %d objects from %s", load(args.port, args.data), args.data)
    if args.ready_file:
        args.ready_file.write_text(str(args.port))

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    log.info("saved %d objects to %s", save(args.port, args.data), args.data)
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
