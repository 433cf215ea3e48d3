from services.ingest.logic import VersionClaim, claim_version

A, B = "a" * 64, "b" * 64


def test_a_free_version_is_new() -> None:
    assert claim_version(None, A) is VersionClaim.NEW


def test_the_same_artifact_again_is_a_duplicate() -> None:
    assert claim_version(A, A) is VersionClaim.DUPLICATE


def test_a_different_artifact_conflicts() -> None:
    assert claim_version(A, B) is VersionClaim.CONFLICT


def test_a_batchs_new_versions_are_found_before_they_are_written() -> None:
    """A version registered twice in one batch: the second registration must see the first
    (a duplicate or a conflict), although its row is written only when the batch's handlers
    are done."""
    from services.ingest.store import NewVersions, StoredVersion

    rows = NewVersions()
    assert rows.find("m", 7) is None
    rows.add(name="m", version=7, status="ingested", sha256="a" * 64, source_uri="s3://b/k")
    assert rows.find("m", 7) == StoredVersion(7, "a" * 64, "ingested")
    assert rows.find("m", 8) is None and rows.find("n", 7) is None
