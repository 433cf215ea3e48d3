"""A publisher's S3 credential writes the upload prefix and nothing else.

The credential is the one `modelreg stack credentials pipeline` prints. With it a PutObject
(and a multipart upload) under `uploads/` works; under `artifacts/` (a new key, or over an
artifact ingest stored) and `archive/` it gets AccessDenied, and so do reads, deletes and a
copy from uploads/ into artifacts/. `modelreg register` through the CLI with that credential
still registers a model, a file or a directory, end to end (ingest, which has its own
credential, copies it to artifacts/).

Only versitygw (the local stack's S3 server where Go is available, as in CI) enforces bucket
policies; on moto, or on endpoints that are not the local stack, these tests fail saying so.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from services.cli.stack import local_s3_defaults
from shared.settings import Settings
from shared.stack.launcher import S3_BUCKET, LocalStack
from shared.stack.s3 import confine_publishers
from shared.storage import ObjectStore
from shared.upload_policy import publisher_bucket_policy, publisher_identity_policy
from tests.conftest import Endpoints
from tests.directory_models import directory_manifest, mlflow_sklearn_dir
from tests.integration.conftest import as_principal
from tests.integration.test_cli_commands import modelreg
from tests.integration.test_directory_artifacts import assert_ingested_and_validated
from tests.integration.test_kafka_acls import role_env
from tests.support import Kafka, for_model, settings_for, unique_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def publisher_env(endpoints: Endpoints) -> dict[str, str]:
    """The publisher's AWS_* settings, as `modelreg stack credentials pipeline` prints them."""
    if endpoints.origin != "local stack":
        pytest.fail(f"these tests need the local stack's S3 accounts; the endpoints are {endpoints.origin}")
    stack = LocalStack()
    if stack.state.s3_server != "versitygw":
        pytest.fail(f"the local stack runs {stack.state.s3_server} as its S3 server, which enforces no bucket "
                    "policies: publishers are NOT confined to uploads/ (install Go: the stack then runs versitygw)")
    if not stack.uploads_confined:
        pytest.fail(f"the local stack's versitygw in {stack.dir} was started before publishers had their own "
                    "S3 account: `modelreg stack up` restarts it with one")
    env = role_env(endpoints, "pipeline")
    assert env["AWS_ACCESS_KEY_ID"] != endpoints.aws_access_key_id, "the publisher got the services' S3 key"
    return {name: env[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


@pytest.fixture(scope="module")
async def confined(settings: Settings, publisher_env: dict[str, str]) -> Settings:
    """This run's bucket under the policy `modelreg stack up` puts on the stack's own bucket;
    returns the publisher's settings (its S3 keys, the pipeline's Kafka principal)."""
    async with ObjectStore(settings) as store:
        await store.ensure_bucket()
        await confine_publishers(await store.boto(), settings.s3_bucket, [publisher_env["AWS_ACCESS_KEY_ID"]])
    return settings_for(as_principal(settings, "pipeline"), publisher_env)


@pytest.fixture
async def publisher_s3(confined: Settings) -> AsyncIterator[Any]:
    async with ObjectStore(confined) as store:
        yield await store.boto()


@pytest.fixture
async def services_s3(settings: Settings) -> AsyncIterator[Any]:
    async with ObjectStore(settings) as store:
        yield await store.boto()


async def _denied(call: Any) -> bool:
    try:
        await call
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "AccessDenied"
    return False


async def _multipart(client: Any, bucket: str, key: str, body: bytes) -> None:
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
    part = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=body)
    await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                           MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})


async def test_the_stacks_bucket_lets_publishers_write_only_uploads(
        publisher_env: dict[str, str], settings: Settings, services_s3: Any) -> None:
    found = await services_s3.get_bucket_policy(Bucket=S3_BUCKET)
    assert json.loads(found["Policy"]) == publisher_bucket_policy(S3_BUCKET, [publisher_env["AWS_ACCESS_KEY_ID"]])


async def test_a_publisher_writes_uploads_and_nothing_else(
        confined: Settings, publisher_s3: Any, services_s3: Any) -> None:
    bucket, name = confined.s3_bucket, unique_name("confined")
    await publisher_s3.put_object(Bucket=bucket, Key=f"uploads/{name}/1/model.pkl", Body=b"staged")
    await _multipart(publisher_s3, bucket, f"uploads/{name}/2/model.pkl", b"staged in parts")
    for key, body in ((f"uploads/{name}/1/model.pkl", b"staged"), (f"uploads/{name}/2/model.pkl", b"staged in parts")):
        assert await (await services_s3.get_object(Bucket=bucket, Key=key))["Body"].read() == body

    stored = f"artifacts/{name}/1/model.pkl"  # as ingest stores a version's artifact
    await services_s3.put_object(Bucket=bucket, Key=stored, Body=b"the validated artifact")
    refused = {
        "a new artifact": publisher_s3.put_object(Bucket=bucket, Key=f"artifacts/{name}/2/model.pkl", Body=b"x"),
        "overwriting an artifact": publisher_s3.put_object(Bucket=bucket, Key=stored, Body=b"swapped"),
        "an artifact in parts": _multipart(publisher_s3, bucket, stored, b"swapped in parts"),
        "copying an upload over an artifact": publisher_s3.copy_object(
            Bucket=bucket, Key=stored, CopySource={"Bucket": bucket, "Key": f"uploads/{name}/1/model.pkl"}),
        "deleting an artifact": publisher_s3.delete_object(Bucket=bucket, Key=stored),
        "reading an artifact": publisher_s3.get_object(Bucket=bucket, Key=stored),
        "writing the archive": publisher_s3.put_object(Bucket=bucket, Key=f"archive/{name}/1/model.pkl", Body=b"x"),
        "writing a checkpoint": publisher_s3.put_object(Bucket=bucket, Key=f"checkpoints/{name}.json", Body=b"{}"),
        "a key beside the prefix": publisher_s3.put_object(Bucket=bucket, Key=f"uploads-{name}/model.pkl", Body=b"x"),
        "listing the bucket": publisher_s3.list_objects_v2(Bucket=bucket, Prefix="artifacts/"),
        "removing the bucket policy": publisher_s3.delete_bucket_policy(Bucket=bucket),
    }
    outcomes = {what: await _denied(call) for what, call in refused.items()}
    assert outcomes == dict.fromkeys(refused, True)
    assert await (await services_s3.get_object(Bucket=bucket, Key=stored))["Body"].read() == b"the validated artifact"
    # the services' own credential is not confined
    await services_s3.put_object(Bucket=bucket, Key=f"artifacts/{name}/3/model.pkl", Body=b"ingest may")


async def test_register_through_the_cli_with_the_publisher_credential(
        confined: Settings, kafka: Kafka, pipeline: Any, services_s3: Any, tmp_path: Path) -> None:
    name = unique_name("publisher-cli")
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps({"weights": [0.1, 0.2]}))
    done = await asyncio.to_thread(modelreg, confined, "register", name, "--artifact", str(artifact),
                                   "--registered-by", "pipelines/publisher-test")
    assert done.returncode == 0, done.stderr
    registered = (await kafka.wait_for("model.registered", for_model(name)))[0]
    assert registered.data["artifact"]["uri"].startswith(f"s3://{confined.s3_bucket}/uploads/{name}/")
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    await kafka.wait_for("model.validated", for_model(name, 1))
    stored = ingested.data["artifact"]["uri"].removeprefix(f"s3://{confined.s3_bucket}/")
    assert stored.startswith("artifacts/"), stored
    body = await (await services_s3.get_object(Bucket=confined.s3_bucket, Key=stored))["Body"].read()
    assert body == artifact.read_bytes()


async def test_register_a_directory_through_the_cli_with_the_publisher_credential(
        confined: Settings, settings: Settings, kafka: Kafka, pipeline: Any, tmp_path: Path) -> None:
    name = unique_name("publisher-dir")
    root = mlflow_sklearn_dir(tmp_path / "model")
    sha256, size = directory_manifest(root)
    done = await asyncio.to_thread(modelreg, confined, "register", name, "--artifact", str(root),
                                   "--format", "mlflow", "--registered-by", "pipelines/publisher-test")
    assert done.returncode == 0, done.stderr
    await assert_ingested_and_validated(settings, kafka, name, root, sha256, size)


def test_uploading_commands_beside_the_stack_default_to_the_publisher_key(
        publisher_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout's `modelreg register` / `import` with no AWS_* of its own uploads as
    the publisher (as it connects to Kafka as the pipeline), never with the services' key."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL", "S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    assert local_s3_defaults("register") == publisher_env
    assert local_s3_defaults("import") == publisher_env
    assert local_s3_defaults("promote") == {}  # uploads nothing
    monkeypatch.setenv("S3_BUCKET", "another-bucket")
    assert local_s3_defaults("register") == {}  # another store: the caller's own settings
    monkeypatch.delenv("S3_BUCKET")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-callers-own")
    assert local_s3_defaults("register") == {}


def test_the_infra_example_is_the_publishers_policy() -> None:
    """infra/s3's IAM policy for real S3 grants what the local stack's bucket policy grants."""
    example = json.loads((ROOT / "infra" / "s3" / "publisher-uploads-policy.json").read_text())
    assert example == publisher_identity_policy("modelreg")
