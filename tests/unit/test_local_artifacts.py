"""The `file://` rule ingest and the MLflow API share (shared.local_artifacts); ingest's own
cases (escapes, missing files, remote hosts) are in test_ingest_sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.local_artifacts import LocalSourceRefused, file_uri, local_artifact_path, roots_text


def test_a_file_uri_names_the_real_path_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    model = root / "a model dir"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}")
    assert file_uri(model) == f"file://{root}/a%20model%20dir/"  # a directory ends in '/'
    assert file_uri(model / "MLmodel") == f"file://{root}/a%20model%20dir/MLmodel"
    assert local_artifact_path(file_uri(model), [root]) == model
    assert local_artifact_path(file_uri(model / "MLmodel"), [root]) == model / "MLmodel"


def test_only_file_uris_and_roots_are_named_in_refusals(tmp_path: Path) -> None:
    with pytest.raises(LocalSourceRefused) as caught:
        local_artifact_path("s3://bucket/key", [tmp_path])
    assert caught.value.code == "unsupported_scheme"
    with pytest.raises(LocalSourceRefused) as caught:
        local_artifact_path(file_uri(tmp_path), [])
    assert caught.value.code == "path_not_allowed" and "MODELREG_ARTIFACT_ROOTS" in caught.value.message
    assert roots_text([Path("/data/models"), Path("/mnt/shared")]) == "/data/models, /mnt/shared"
    assert "MODELREG_ARTIFACT_ROOTS is not set" in roots_text([])
