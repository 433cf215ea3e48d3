"""A CopyObject answer read by s3lean (shared/s3lean.py `copy_result`): its checksum, and an
error S3 sends after the 200 status of a long copy. No servers."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from shared.s3lean import copy_result
from shared.storage import is_retryable

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def test_the_checksum_fields_are_read_by_botocores_names() -> None:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult {NS}><ETag>"e"</ETag>'
            '<LastModified>2026-12-01T00:00:00.000Z</LastModified>'
            '<ChecksumSHA256>n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=</ChecksumSHA256>'
            '<ChecksumType>FULL_OBJECT</ChecksumType></CopyObjectResult>').encode()
    assert copy_result(body) == {"ChecksumSHA256": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
                                 "ChecksumType": "FULL_OBJECT"}
    assert copy_result(f'<CopyObjectResult {NS}><ETag>"e"</ETag></CopyObjectResult>'.encode()) == {}


def test_an_error_after_the_200_status_raises_and_is_retried_when_s3_says_so() -> None:
    body = b"<?xml version='1.0'?>\n<Error><Code>InternalError</Code><Message>try again</Message></Error>"
    with pytest.raises(ClientError) as failed:
        copy_result(b"  \n" + body)  # S3 keeps a long copy's connection alive with whitespace
    assert failed.value.response["Error"] == {"Code": "InternalError", "Message": "try again"}
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500  # as botocore raises it
    assert is_retryable(failed.value)
    with pytest.raises(ClientError) as aborted:  # any code: a copy that failed after its 200 is retried
        copy_result(f"<Error {NS}><Code>OperationAborted</Code><Message>later</Message></Error>".encode())
    assert aborted.value.response["Error"]["Code"] == "OperationAborted"
    assert is_retryable(aborted.value)
    for not_a_result in (b"<CopyObjectResult><ETag>", b"<html><body>proxy says hello</body></html>"):
        with pytest.raises(ClientError) as odd:
            copy_result(not_a_result)
        assert is_retryable(odd.value), not_a_result
