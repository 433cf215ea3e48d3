"""What a publisher's S3 credential may do: write objects under the bucket's upload prefix,
and nothing else (no reads, no lists, no deletes, nothing under `artifacts/` or `archive/`).

The SDK, the CLI and the MLflow importer stage artifacts under `uploads/`; only the ingest
service copies them to `artifacts/`, after checking their digest. Two forms of one rule:

- `publisher_bucket_policy`: a bucket policy naming the publishers' access keys (the local
  stack's versitygw puts it on its bucket; MinIO and AWS accept it too);
- `publisher_identity_policy`: an IAM policy to attach to a publishers' user or role on AWS
  (or a MinIO user); infra/s3/publisher-uploads-policy.json is this for the bucket `modelreg`.

Multipart uploads (create, upload part, complete) are authorised as s3:PutObject; aborting
one and listing its parts are their own actions, which boto3's transfer manager uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

UPLOADS_PREFIX = "uploads/"
PUBLISHER_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
POLICY_VERSION = "2012-10-17"


def uploads_resource(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}/{UPLOADS_PREFIX}*"


def publisher_bucket_policy(bucket: str, publishers: Sequence[str]) -> dict[str, Any]:
    """A bucket policy: the principals `publishers` (access key ids, or IAM ARNs on AWS) may
    write under the upload prefix. Everything else stays implicitly denied to them; the
    bucket's owner (the services' credential) is not affected by it."""
    if not publishers:
        raise ValueError("a publisher bucket policy needs at least one publisher principal")
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Sid": "PublishersWriteOnlyUploads",
            "Effect": "Allow",
            "Principal": {"AWS": list(publishers)},
            "Action": list(PUBLISHER_ACTIONS),
            "Resource": [uploads_resource(bucket)],
        }],
    }


def publisher_identity_policy(bucket: str) -> dict[str, Any]:
    """The same rights as an IAM (identity) policy, for the publishers' user or role."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Sid": "PublishersWriteOnlyUploads",
            "Effect": "Allow",
            "Action": list(PUBLISHER_ACTIONS),
            "Resource": [uploads_resource(bucket)],
        }],
    }
