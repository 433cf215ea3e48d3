"""Models signed as a publisher would sign them: with the OpenSSF `model_signing` package's own
signer (elliptic-curve key), its model.sig inside the directory.

TEST_SIGNER is derived from a public label, so tests/policy.yaml can trust its public key
(rule `signed-*`) without a key file: it is a test key by design, its private half is no secret.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import model_signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.manifest import FileEntry

_ORDER_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
TEST_SIGNER = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"modelreg tests: the signed-* rule's model signer").digest()) % _ORDER_P256,
    ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_private(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def sign_directory(root: Path, key: ec.EllipticCurvePrivateKey, key_dir: Path, *,
                   ignore_git_paths: bool = True, shards: bool = False, hash_type: str = "sha256") -> Path:
    """Sign `root` with model_signing's key signer, writing `root`/model.sig (left out of what
    it signs, as `model_signing sign key ROOT --signature ROOT/model.sig` does)."""
    signature = root / "model.sig"
    signature.unlink(missing_ok=True)
    config = model_signing.hashing.Config()
    if shards:
        config = config.use_shard_serialization()
    elif hash_type != "sha256":
        config = config.use_file_serialization(hashing_algorithm=hash_type)  # type: ignore[arg-type]
    config = config.set_ignored_paths(paths=[signature], ignore_git_paths=ignore_git_paths)
    private = write_private(key, key_dir / f"signer-{id(key)}.pem")
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=private)
     .set_hashing_config(config).sign(root, signature))
    return signature


def manifest_of(root: Path) -> list[FileEntry]:
    """The manifest ingest records for `root` (every file, model.sig included)."""
    return [FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"), key=lambda q: q.as_posix().encode()) if p.is_file()]
