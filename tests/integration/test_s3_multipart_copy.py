"""Server-side copies on the real S3 server: above the multipart threshold an object is copied
in ranged parts (here a threshold of 5 MiB, so a 12 MiB object goes in three), byte for byte,
with its metadata, and tagged as asked."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from botocore.exceptions import ClientError

from shared.settings import Settings
from shared.storage import ObjectStore, S3Location

MIB = 1024 * 1024


async def test_an_object_over_the_threshold_is_copied_in_parts_byte_for_byte(settings: Settings) -> None:
    small_parts = settings.model_copy(update={"s3_multipart_copy_bytes": 5 * MIB})
    body = os.urandom(12 * MIB + 3)
    source = S3Location(settings.s3_bucket, f"copy-test/{uuid.uuid4().hex}/model.bin")
    target = S3Location(settings.s3_bucket, f"archive/{source.key}")
    async with ObjectStore(small_parts) as store:
        await store.ensure_bucket()
        s3 = await store.boto()
        await s3.put_object(Bucket=source.bucket, Key=source.key, Body=body,
                                      ContentType="application/x-model", Metadata={"origin": "tests"})
        await store.copy(source, target, tagging="modelreg-stage=archived")

        assert await store.digest(target) == (hashlib.sha256(body).hexdigest(), len(body))
        head = await s3.head_object(Bucket=target.bucket, Key=target.key)
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts: 5 + 5 + 2 MiB
        assert head["ContentType"] == "application/x-model"
        assert head["Metadata"] == {"origin": "tests"}
        tags = await s3.get_object_tagging(Bucket=target.bucket, Key=target.key)
        assert tags["TagSet"] == [{"Key": "modelreg-stage", "Value": "archived"}]
        uploads = await s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
        assert not uploads.get("Uploads")  # completed, nothing left open


async def test_an_object_under_the_threshold_is_one_copy(settings: Settings) -> None:
    body = b"small model"
    source = S3Location(settings.s3_bucket, f"copy-test/{uuid.uuid4().hex}/small.bin")
    target = S3Location(settings.s3_bucket, f"archive/{source.key}")
    async with ObjectStore(settings.model_copy(update={"s3_multipart_copy_bytes": 5 * MIB})) as store:
        await store.ensure_bucket()
        s3 = await store.boto()
        await s3.put_object(Bucket=source.bucket, Key=source.key, Body=body, ContentType="application/x-model",
                            Metadata={"origin": "tests"})
        await s3.put_object_tagging(Bucket=source.bucket, Key=source.key,
                                              Tagging={"TagSet": [{"Key": "kept", "Value": "yes"}]})
        await store.copy(source, target)  # tags kept from the source
        assert await store.digest(target) == (hashlib.sha256(body).hexdigest(), len(body))
        head = await s3.head_object(Bucket=target.bucket, Key=target.key)
        assert "-" not in head["ETag"].strip('"')
        assert (head["ContentType"], head["Metadata"]) == ("application/x-model", {"origin": "tests"})
        tags = await s3.get_object_tagging(Bucket=target.bucket, Key=target.key)
        assert tags["TagSet"] == [{"Key": "kept", "Value": "yes"}]

        # Tags replaced, then removed, and a storage class every S3 server knows: as archival asks.
        again = S3Location(settings.s3_bucket, f"archive/{source.key} again")
        await store.copy(source, again, tagging="modelreg-archived=true&stage=archived", storage_class="STANDARD")
        tags = await s3.get_object_tagging(Bucket=again.bucket, Key=again.key)
        assert sorted((t["Key"], t["Value"]) for t in tags["TagSet"]) == [("modelreg-archived", "true"),
                                                                          ("stage", "archived")]
        # (To a new key: over an existing one, versitygw keeps that object's tags, through botocore too.)
        back = S3Location(settings.s3_bucket, f"restored/{source.key}")
        await store.copy(again, back, tagging="")
        assert (await s3.get_object_tagging(Bucket=back.bucket, Key=back.key))["TagSet"] == []
        head = await s3.head_object(Bucket=back.bucket, Key=back.key)
        assert (head["ContentType"], head["Metadata"]) == ("application/x-model", {"origin": "tests"})


async def test_a_source_overwritten_during_a_copy_in_parts_fails_it_rather_than_splice_two(
        settings: Settings) -> None:
    """Each part is copied only from the object the copy's HEAD saw (CopySourceIfMatch): an
    overwrite after it fails the copy with PreconditionFailed, leaving no upload open."""
    small_parts = settings.model_copy(update={"s3_multipart_copy_bytes": 5 * MIB})
    source = S3Location(settings.s3_bucket, f"copy-test/{uuid.uuid4().hex}/model.bin")
    target = S3Location(settings.s3_bucket, f"archive/{source.key}")
    async with ObjectStore(small_parts) as store:
        await store.ensure_bucket()
        s3 = await store.boto()
        await s3.put_object(Bucket=source.bucket, Key=source.key, Body=os.urandom(12 * MIB))
        assert store.lean is not None
        head = store.lean.head

        async def head_then_overwritten(bucket: str, key: str, **options: object) -> object:
            seen = await head(bucket, key, **options)
            await s3.put_object(Bucket=source.bucket, Key=source.key, Body=os.urandom(12 * MIB))
            return seen

        store.lean.head = head_then_overwritten  # type: ignore[method-assign]
        with pytest.raises(ClientError) as refused:
            await store.copy(source, target)
        assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
        uploads = await s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
        assert not uploads.get("Uploads")
