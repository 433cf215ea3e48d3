"""Directory artifacts through the running services (real Kafka, PostgreSQL, S3): an MLflow
model directory from an S3 prefix and from a file:// directory is ingested file by file with
its manifest and validated; a malicious pickle inside is named; unsafe paths and too many files
are refused; a file altered after validation is caught by promotion's integrity check; the CLI
uploads a directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.api import auth
from services.archival.cold import move_from_cold
from shared.manifest import FileEntry, manifest_digest, manifest_key
from shared.settings import Settings
from shared.storage import ObjectStore, S3Location, parse_s3_uri
from tests.directory_models import EVIL_PICKLE, directory_manifest, mlflow_sklearn_dir
from tests.integration.conftest import running_api
from tests.integration.test_cli_commands import run
from tests.integration.test_pipeline import audit_of, evaluated, promoted
from tests.support import Kafka, cloudevent, eventually, for_model, unique_name

SYSTEM = "posix.system" if os.name == "posix" else "nt.system"
MLFLOW_FILES = ["MLmodel", "conda.yaml", "model.pkl", "python_env.yaml", "requirements.txt"]


def registered(name: str, uri: str, sha256: str, size: int, fmt: str | None = "mlflow") -> dict:
    artifact = {"uri": uri, "sha256": sha256, "size_bytes": size}
    if fmt:
        artifact["format"] = fmt
    return cloudevent("model.registered", {"name": name, "artifact": artifact,
                                           "registered_by": "pipelines/train", "metrics": {"auc": 0.9}})


async def put_directory(settings: Settings, prefix: str, root: Path) -> tuple[str, str, int]:
    """Upload every file of `root` under `prefix` (ending in '/'); (uri, sha256, size) to announce."""
    async with ObjectStore(settings) as store:
        await store.ensure_bucket()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            await (await store.boto()).put_object(
                Bucket=settings.s3_bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes())
    sha256, size = directory_manifest(root)
    return f"s3://{settings.s3_bucket}/{prefix}", sha256, size


async def stored_files(settings: Settings, uri: str) -> dict[str, bytes]:
    prefix = parse_s3_uri(uri)
    async with ObjectStore(settings) as store:
        keys = await store.list_prefix(prefix.bucket, prefix.key, 100)
        return {key[len(prefix.key):]: b"".join([c async for c in store.stream(S3Location(prefix.bucket, key))])
                for key, _ in keys}


def expected_files(root: Path) -> list[dict]:
    return [{"path": p, "size_bytes": (root / p).stat().st_size,
             "sha256": hashlib.sha256((root / p).read_bytes()).hexdigest()}
            for p in sorted((q.relative_to(root).as_posix() for q in root.rglob("*") if q.is_file()), key=str.encode)]


def checks_of(seen) -> dict[str, dict]:
    return {c["name"]: c for c in seen.data["checks"]}


async def assert_ingested_and_validated(settings: Settings, kafka: Kafka, name: str, root: Path,
                                        sha256: str, size: int) -> None:
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    artifact = ingested.data["artifact"]
    assert artifact["uri"] == f"s3://{settings.s3_bucket}/artifacts/{name}/1/{sha256}/"
    assert (artifact["sha256"], artifact["size_bytes"]) == (sha256, size)
    assert artifact["files"] == expected_files(root)
    assert manifest_digest(FileEntry(**f) for f in artifact["files"]) == sha256
    copies = await stored_files(settings, artifact["uri"])
    assert copies == {f["path"]: (root / f["path"]).read_bytes() for f in artifact["files"]}
    validated = (await kafka.wait_for("model.validated", for_model(name, 1)))[0]
    checks = checks_of(validated)
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["checksum"]["detail"] == f"every file matches the manifest (sha256 {sha256})"
    assert checks["pickle_safety"]["detail"].endswith("all allowed")
    audit = (await kafka.wait_for("registry.audit", audit_of(name, "ingested", 1)))[0]
    assert audit.data["evidence"]["file_count"] == len(artifact["files"])


async def test_an_mlflow_directory_from_an_s3_prefix_is_ingested_with_its_manifest_and_validated(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("dir")
    root = mlflow_sklearn_dir(tmp_path / "model")
    (root / "data").mkdir()
    (root / "data" / "input_example.json").write_text('{"columns": ["a"], "data": [[1.0]]}')
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/run-1/", root)
    event = registered(name, uri, sha256, size)
    await kafka.publish("model.registered", event)
    await assert_ingested_and_validated(settings, kafka, name, root, sha256, size)
    # a redelivery finds the copy complete: nothing copied again, nothing removed
    await kafka.publish("model.registered", event)
    later = registered(name, uri, sha256, size)  # behind it on the model's partition
    await kafka.publish("model.registered", later)
    await kafka.wait_for("model.ingested", for_model(name, 2))
    assert len(kafka.matching("model.ingested", for_model(name, 1))) == 1
    stored = f"s3://{settings.s3_bucket}/artifacts/{name}/1/{sha256}/"
    assert await stored_files(settings, stored) == {f["path"]: (root / f["path"]).read_bytes()
                                                    for f in expected_files(root)}


async def test_an_mlflow_directory_from_a_file_uri_is_ingested_and_validated(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    name = unique_name("dir")
    root = mlflow_sklearn_dir(settings.artifact_root_paths[0] / unique_name("mlflow") / "model")
    sha256, size = directory_manifest(root)
    await kafka.publish("model.registered", registered(name, f"file://{root}/", sha256, size, fmt="pickle"))
    await assert_ingested_and_validated(settings, kafka, name, root, sha256, size)


async def test_a_directory_whose_manifest_differs_from_the_announced_digest_is_rejected_and_not_kept(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("dir")
    root = mlflow_sklearn_dir(tmp_path / "model")
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, "0" * 64, size))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    assert rejected.data["reasons"][0]["code"] == "checksum_mismatch"
    assert sha256 in rejected.data["reasons"][0]["message"]
    assert await stored_files(settings, f"s3://{settings.s3_bucket}/artifacts/{name}/1/{'0' * 64}/") == {}


@pytest.mark.parametrize("inside", ["model.pkl", "sub/extra/evil.pkl"])
async def test_a_directory_with_a_malicious_pickle_inside_is_rejected_naming_that_file(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path, inside: str) -> None:
    name = unique_name("dir")
    root = mlflow_sklearn_dir(tmp_path / "model")
    (root / inside).parent.mkdir(parents=True, exist_ok=True)
    (root / inside).write_bytes(EVIL_PICKLE)
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    assert [(r["code"], r["message"]) for r in rejected.data["reasons"]] == [
        ("unsafe_pickle", f"pickle_safety: disallowed import {SYSTEM} in {inside}")]
    assert not kafka.matching("model.validated", for_model(name))


async def test_unsafe_directory_paths_are_refused(settings: Settings, kafka: Kafka, pipeline,
                                                  tmp_path: Path) -> None:
    base = settings.artifact_root_paths[0] / unique_name("unsafe")
    escaping = mlflow_sklearn_dir(base / "escaping")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (escaping / "leak.txt").symlink_to(secret)
    odd = mlflow_sklearn_dir(base / "odd")
    (odd / "bad\x1bname").write_text("x")
    sha256, size = "1" * 64, 1
    cases = [
        (f"file://{escaping}/", "symlink_escape", "leak.txt"),
        (f"file://{odd}/", "invalid_path", "non-printable"),
        (f"file://{base}/odd/../../../", "path_traversal", ".."),
        (f"s3://{settings.s3_bucket}/inbox/../artifacts/", "path_traversal", ".."),
    ]
    for uri, code, said in cases:
        name = unique_name("dir")
        await kafka.publish("model.registered", registered(name, uri, sha256, size))
        rejected = (await kafka.wait_for("model.rejected", for_model(name)))[0]
        reason = rejected.data["reasons"][0]
        assert reason["code"] == code, reason
        assert said in reason["message"], reason


async def test_a_directory_with_too_many_files_is_rejected_before_anything_is_copied(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("fewfiles")  # its rule allows 3 files
    root = mlflow_sklearn_dir(tmp_path / "model")
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size))
    rejected = (await kafka.wait_for("model.rejected", for_model(name)))[0]
    reason = rejected.data["reasons"][0]
    assert reason["code"] == "too_many_files"
    assert "more than 3 files" in reason["message"] and "max_files" in reason["message"]
    assert await stored_files(settings, f"s3://{settings.s3_bucket}/artifacts/{name}/") == {}


async def test_a_file_altered_after_validation_is_caught_before_production(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("life")  # thresholds on auc: a QA result takes it to production
    root = mlflow_sklearn_dir(tmp_path / "model")
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size, fmt="pickle"))
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    stored = parse_s3_uri(ingested.data["artifact"]["uri"])
    async with ObjectStore(settings) as store:
        await (await store.boto()).put_object(
            Bucket=stored.bucket, Key=stored.key + "conda.yaml", Body=b"name: swapped\n")
        await (await store.boto()).put_object(
            Bucket=stored.bucket, Key=stored.key + "sitecustomize.py", Body=b"import os\n")
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    reason = rejected.data["reasons"][0]
    assert reason["code"] == "checksum_mismatch"
    assert "conda.yaml: changed" in reason["message"]
    assert "sitecustomize.py: not in the manifest" in reason["message"]
    assert "model.pkl" not in reason["message"]
    quarantined = (await kafka.wait_for("registry.audit", audit_of(name, "quarantined", 1)))[0]
    assert quarantined.data["evidence"]["files"] == [{"path": "conda.yaml", "problem": "changed"},
                                                     {"path": "sitecustomize.py", "problem": "extra"}]
    assert not kafka.matching("model.promoted", promoted(name, 1, "production"))


async def test_an_intact_directory_reaches_production(settings: Settings, kafka: Kafka, pipeline,
                                                      tmp_path: Path) -> None:
    name = unique_name("life")
    root = mlflow_sklearn_dir(tmp_path / "model")
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size, fmt="pickle"))
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))
    await kafka.wait_for("model.promoted", promoted(name, 1, "production"))


async def test_the_cli_uploads_a_directory(settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("dir-cli")
    root = mlflow_sklearn_dir(tmp_path / "model")
    sha256, size = directory_manifest(root)
    done = await run(settings, "register", name, "--artifact", str(root), "--format", "mlflow",
                     "--registered-by", "pipelines/cli-test")
    assert done.returncode == 0, done.stderr
    registered_event = (await kafka.wait_for("model.registered", for_model(name)))[0]
    announced = registered_event.data["artifact"]
    assert announced["uri"].startswith(f"s3://{settings.s3_bucket}/uploads/{name}/") and announced["uri"].endswith("/")
    assert (announced["sha256"], announced["size_bytes"], announced["format"]) == (sha256, size, "mlflow")
    await assert_ingested_and_validated(settings, kafka, name, root, sha256, size)
    # the staged upload is dropped once the registry's copy is recorded
    async with ObjectStore(settings) as store:
        staged = parse_s3_uri(announced["uri"])
        await eventually(lambda: _empty(store, staged))

    refused = await run(settings, "register", name, "--artifact", str(tmp_path / "nowhere"))
    assert refused.returncode != 0 and "no such file or directory" in refused.stderr


async def _empty(store: ObjectStore, prefix: S3Location) -> bool:
    return not await store.list_prefix(prefix.bucket, prefix.key, 1)


@pytest.fixture(scope="module")
async def api_client(settings: Settings, pipeline) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, presign_seconds=120) as service, \
            httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        yield client


async def test_the_api_registers_a_directory_and_serves_it_file_by_file(
        settings: Settings, kafka: Kafka, db, api_client: httpx.AsyncClient, tmp_path: Path) -> None:
    name = unique_name("dir-api")
    root = mlflow_sklearn_dir(tmp_path / "model")
    (root / "data").mkdir()
    (root / "data" / "example.json").write_text("[1, 2]")
    sha256, size = directory_manifest(root)
    token, _ = await auth.create(db, name=f"ci-{name}", role="publisher")
    headers = {"Authorization": f"Bearer {token}"}
    parts = [("artifact", (p, (root / p).read_bytes(), "application/octet-stream"))
             for p in ("MLmodel", "model.pkl", "conda.yaml", "python_env.yaml", "requirements.txt",
                       "data/example.json")]

    traversal = [("artifact", ("../outside", b"x", "application/octet-stream")), parts[0]]
    refused = await api_client.post(f"/api/v1/models/{name}/versions", files=traversal, headers=headers)
    assert refused.status_code == 400 and "path traversal" in refused.json()["detail"], refused.text
    twice = await api_client.post(f"/api/v1/models/{name}/versions", files=[parts[0], parts[0]], headers=headers)
    assert twice.status_code == 400 and "given twice" in twice.json()["detail"], twice.text

    answer = await api_client.post(f"/api/v1/models/{name}/versions", files=parts,
                                   data={"format": "mlflow"}, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["artifact"] == {"files": 6, "sha256": sha256, "size_bytes": size}
    await assert_ingested_and_validated(settings, kafka, name, root, sha256, size)

    async def link() -> dict | None:
        got = await api_client.get(f"/api/v1/models/{name}/versions/1/artifact")
        return got.json() if got.status_code == 200 else None

    served = await eventually(link)
    assert served["sha256"] == sha256 and served["uri"].endswith(f"/artifacts/{name}/1/{sha256}/")
    assert [f["path"] for f in served["files"]] == [f["path"] for f in expected_files(root)]
    async with httpx.AsyncClient(timeout=30) as outside:
        manifest = (await outside.get(served["url"])).content
        assert hashlib.sha256(manifest).hexdigest() == sha256
        for file in served["files"]:
            body = (await outside.get(file["url"])).content
            assert hashlib.sha256(body).hexdigest() == file["sha256"] and len(body) == file["size_bytes"]
            assert body == (root / file["path"]).read_bytes()


async def test_a_rejected_directory_moves_to_cold_storage_file_by_file_and_comes_back(
        settings: Settings, kafka: Kafka, pipeline, db, tmp_path: Path) -> None:
    name = unique_name("life")  # rejected_grace 2s: the sweep archives it soon after
    root = mlflow_sklearn_dir(tmp_path / "model", pickle_bytes=EVIL_PICKLE)
    uri, sha256, size = await put_directory(settings, f"inbox/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size))
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    stored = ingested.data["artifact"]["uri"]
    files = {f["path"]: (root / f["path"]).read_bytes() for f in ingested.data["artifact"]["files"]}
    archived = (await kafka.wait_for("model.archived", for_model(name, 1), timeout=60))[0]
    assert archived.data["reason"] == "rejected"
    row = await db.fetchrow("SELECT archive_uri FROM archival_versions WHERE name = $1 AND version = 1", name)
    cold = parse_s3_uri(row["archive_uri"])
    assert row["archive_uri"] == f"s3://{settings.s3_bucket}/archive/{parse_s3_uri(stored).key}"
    assert await stored_files(settings, row["archive_uri"]) == files
    assert await stored_files(settings, stored) == {}
    async with ObjectStore(settings) as store:
        manifest = b"".join([c async for c in store.stream(S3Location(cold.bucket, manifest_key(cold.key)))])
        assert hashlib.sha256(manifest).hexdigest() == sha256
        tags = await (await store.boto()).get_object_tagging(Bucket=cold.bucket, Key=cold.key + "model.pkl")
        assert {"Key": "modelreg-stage", "Value": "archived"} in tags["TagSet"]
        await move_from_cold(store, stored)  # what a restore does
        await move_from_cold(store, stored)  # twice changes nothing
        assert await store.head(S3Location(cold.bucket, manifest_key(parse_s3_uri(stored).key))) is not None
    assert await stored_files(settings, stored) == files
    assert await stored_files(settings, row["archive_uri"]) == {}
