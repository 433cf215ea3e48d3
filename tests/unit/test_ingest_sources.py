"""Where ingest may take an artifact from (allowed buckets, artifact roots, no escapes), and the
registry key it stores it under."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from services.ingest.artifacts import (
    FileDirectory,
    FileSource,
    S3Prefix,
    SourceRefused,
    registry_key,
    resolve_source,
)
from shared.settings import Settings, load_settings
from shared.storage import S3Location

SHA = "c" * 64


def settings(*roots: Path, allowed: str = "", bucket: str = "modelreg") -> Settings:
    return load_settings(artifact_roots=":".join(str(r) for r in roots), allowed_buckets=allowed,
                         s3_bucket=bucket)


def refused(uri: str, config: Settings) -> SourceRefused:
    with pytest.raises(SourceRefused) as caught:
        resolve_source(uri, config)
    assert caught.value.message == str(caught.value)
    return caught.value


def file_uri(path: Path) -> str:
    return "file://" + quote(str(path))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """An artifact root holding `model.onnx` and `sub/model.pkl`, beside a directory outside it."""
    directory = (tmp_path / "models").resolve()
    (directory / "sub").mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"onnx")
    (directory / "sub" / "model.pkl").write_bytes(b"\x80\x04")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(b"secret")
    return directory


# ---------------------------------------------------------------------------- s3


def test_the_registry_bucket_is_always_allowed() -> None:
    assert resolve_source("s3://modelreg/runs/7/model.onnx", settings()) == S3Location("modelreg", "runs/7/model.onnx")


@pytest.mark.parametrize("bucket", ["team-a", "team-b"])
def test_listed_buckets_are_allowed(bucket: str) -> None:
    config = settings(allowed="team-a, team-b")
    assert resolve_source(f"s3://{bucket}/m.pt", config) == S3Location(bucket, "m.pt")


@pytest.mark.parametrize("uri", ["s3://elsewhere/m.pt", "s3://team-a-evil/m.pt", "s3://modelreg2/m.pt"])
def test_other_buckets_are_not_allowed(uri: str) -> None:
    error = refused(uri, settings(allowed="team-a"))
    assert error.code == "bucket_not_allowed"
    assert "MODELREG_ALLOWED_BUCKETS" in error.message


def test_a_changed_registry_bucket_replaces_the_default() -> None:
    config = settings(bucket="other-registry")
    assert resolve_source("s3://other-registry/k", config) == S3Location("other-registry", "k")
    assert refused("s3://modelreg/k", config).code == "bucket_not_allowed"


@pytest.mark.parametrize("uri", ["s3://modelreg", "s3://modelreg/", "s3:///key", "s3://"])
def test_an_s3_uri_needs_a_bucket_and_a_key(uri: str) -> None:
    assert refused(uri, settings()).code == "invalid_uri"


@pytest.mark.parametrize("uri", [
    "s3://modelreg/../other/key",
    "s3://modelreg/a/../../b",
    "s3://modelreg/a/..",
    "s3://modelreg/a/%2e%2e/b",        # percent-encoded
    "s3://elsewhere/a/../b",           # refused as traversal before the bucket is even judged
])
def test_dot_dot_segments_in_an_s3_key_are_refused(uri: str) -> None:
    assert refused(uri, settings()).code == "path_traversal"


def test_dots_inside_a_key_segment_are_fine() -> None:
    assert resolve_source("s3://modelreg/a..b/..c/model", settings()) == S3Location("modelreg", "a..b/..c/model")


def test_a_percent_encoded_key_is_decoded() -> None:
    assert resolve_source("s3://modelreg/my%20model.onnx", settings()).key == "my model.onnx"


# ---------------------------------------------------------------------------- file


def test_a_file_inside_a_root_is_a_file_source(root: Path) -> None:
    assert resolve_source(file_uri(root / "model.onnx"), settings(root)) == FileSource(root / "model.onnx")
    assert resolve_source(file_uri(root / "sub" / "model.pkl"), settings(root)) == FileSource(
        root / "sub" / "model.pkl")


def test_localhost_is_the_local_machine(root: Path) -> None:
    uri = "file://localhost" + quote(str(root / "model.onnx"))
    assert resolve_source(uri, settings(root)) == FileSource(root / "model.onnx")


def test_a_file_inside_any_of_several_roots_is_allowed(tmp_path: Path, root: Path) -> None:
    outside = (tmp_path / "outside").resolve()
    config = settings(tmp_path / "nonexistent", root, outside)
    assert resolve_source(file_uri(outside / "secret.bin"), config) == FileSource(outside / "secret.bin")


def test_a_percent_encoded_file_path_is_decoded(root: Path) -> None:
    (root / "my model.onnx").write_bytes(b"x")
    uri = "file://" + str(root / "my%20model.onnx")
    assert resolve_source(uri, settings(root)) == FileSource(root / "my model.onnx")


def test_file_uris_are_disabled_without_roots(root: Path) -> None:
    error = refused(file_uri(root / "model.onnx"), settings())
    assert error.code == "path_not_allowed"
    assert "MODELREG_ARTIFACT_ROOTS" in error.message


def test_a_file_outside_every_root_is_not_allowed(tmp_path: Path, root: Path) -> None:
    assert refused(file_uri(tmp_path.resolve() / "outside" / "secret.bin"), settings(root)).code == "path_not_allowed"


def test_a_sibling_sharing_the_roots_name_prefix_is_outside(tmp_path: Path, root: Path) -> None:
    sibling = tmp_path.resolve() / "models-evil"
    sibling.mkdir()
    (sibling / "m.onnx").write_bytes(b"x")
    assert refused(file_uri(sibling / "m.onnx"), settings(root)).code == "path_not_allowed"


def test_a_symlinked_file_escaping_a_root_is_refused(tmp_path: Path, root: Path) -> None:
    (root / "innocent.onnx").symlink_to(tmp_path / "outside" / "secret.bin")
    error = refused(file_uri(root / "innocent.onnx"), settings(root))
    assert error.code == "symlink_escape"


def test_a_symlinked_directory_escaping_a_root_is_refused(tmp_path: Path, root: Path) -> None:
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert refused(file_uri(root / "linked" / "secret.bin"), settings(root)).code == "symlink_escape"


def test_a_symlink_that_stays_inside_the_root_resolves_to_its_target(root: Path) -> None:
    (root / "latest.onnx").symlink_to(root / "model.onnx")
    assert resolve_source(file_uri(root / "latest.onnx"), settings(root)) == FileSource(root / "model.onnx")


def test_a_root_given_through_a_symlink_still_admits_its_files(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert resolve_source(file_uri(alias / "model.onnx"), settings(alias)) == FileSource(root / "model.onnx")


@pytest.mark.parametrize("relative", ["sub/../model.onnx", "../outside/secret.bin", "sub/.."])
def test_dot_dot_segments_in_a_file_path_are_refused(root: Path, relative: str) -> None:
    uri = "file://" + str(root) + "/" + relative
    assert refused(uri, settings(root)).code == "path_traversal"


def test_dot_dot_is_refused_even_when_file_uris_are_disabled(root: Path) -> None:
    assert refused("file://" + str(root) + "/../x", settings()).code == "path_traversal"


@pytest.mark.parametrize("relative", ["missing.onnx", "sub/missing.pkl", "missing/"])
def test_a_missing_file_or_directory_inside_a_root_is_missing(root: Path, relative: str) -> None:
    assert refused(file_uri(root / relative), settings(root)).code == "artifact_missing"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_directory_inside_a_root_is_a_directory_artifact(root: Path, suffix: str) -> None:
    assert resolve_source(file_uri(root / "sub") + suffix, settings(root)) == FileDirectory(root / "sub")


def test_a_file_named_as_a_directory_is_missing(root: Path) -> None:
    assert refused(file_uri(root / "model.onnx") + "/", settings(root)).code == "artifact_missing"


def test_an_s3_uri_ending_in_a_slash_is_a_prefix() -> None:
    assert resolve_source("s3://modelreg/uploads/x/", settings()) == S3Prefix("modelreg", "uploads/x/")


def test_a_dangling_symlink_inside_a_root_is_missing(root: Path) -> None:
    (root / "dangling.onnx").symlink_to(root / "gone.onnx")
    assert refused(file_uri(root / "dangling.onnx"), settings(root)).code == "artifact_missing"


@pytest.mark.parametrize("host", ["fileserver", "10.0.0.5", "example.com:22"])
def test_a_file_uri_naming_a_remote_host_is_invalid(root: Path, host: str) -> None:
    error = refused(f"file://{host}{root}/model.onnx", settings(root))
    assert error.code == "invalid_uri"
    assert "remote host" in error.message


# ---------------------------------------------------------------------------- other schemes


@pytest.mark.parametrize("uri,named", [
    ("http://example.com/model.onnx", "'http'"),
    ("https://example.com/model.onnx", "'https'"),
    ("gs://bucket/model.onnx", "'gs'"),
    ("ftp://host/model.onnx", "'ftp'"),
    ("/data/model.onnx", "'a bare path'"),
    ("model.onnx", "'a bare path'"),
])
def test_other_schemes_are_unsupported(uri: str, named: str) -> None:
    error = refused(uri, settings(Path(os.sep)))
    assert error.code == "unsupported_scheme"
    assert named in error.message


# ---------------------------------------------------------------------------- registry key


def test_the_registry_key_is_content_addressed_by_name_version_and_digest() -> None:
    assert registry_key("fraud-model", 3, SHA) == f"artifacts/fraud-model/3/{SHA}"


def test_registry_keys_differ_in_each_part() -> None:
    keys = {registry_key("a", 1, SHA), registry_key("b", 1, SHA), registry_key("a", 2, SHA),
            registry_key("a", 1, "d" * 64)}
    assert len(keys) == 4


def test_the_registry_key_has_one_segment_per_part() -> None:
    assert registry_key("m.v2_x", 12, SHA).split("/") == ["artifacts", "m.v2_x", "12", SHA]
