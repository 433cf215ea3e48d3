from services.ingest.logic import VersionClaim, claim_version

A, B = "a" * 64, "b" * 64


def test_a_free_version_is_new() -> None:
    assert claim_version(None, A) is VersionClaim.NEW


def test_the_same_artifact_again_is_a_duplicate() -> None:
    assert claim_version(A, A) is VersionClaim.DUPLICATE


def test_a_different_artifact_conflicts() -> None:
    assert claim_version(A, B) is VersionClaim.CONFLICT
