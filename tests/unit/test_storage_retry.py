"""Which S3 faults are waited out (retried, never dead-lettered) and which are answers."""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from shared.consumer import is_retryable as consumer_retries
from shared.storage import is_missing, is_retryable


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("exc", [
    EndpointConnectionError(endpoint_url="http://s3"),      # the server is down
    ConnectionClosedError(endpoint_url="http://s3"),        # ... or went away mid-body (s3lean)
    ReadTimeoutError(endpoint_url="http://s3"),
    ResponseStreamingError(error="connection reset"),        # aioboto3 streamed body cut
    IncompleteReadError(actual_bytes=10, expected_bytes=100),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    aiohttp.ServerDisconnectedError(),
    _client_error(503, "SlowDown"),
    _client_error(503, "ServiceUnavailable"),
    _client_error(500, "InternalError"),
    _client_error(429, "TooManyRequests"),
    _client_error(400, "RequestTimeout"),
    _client_error(400, "ThrottlingException"),
    _client_error(403, "RequestTimeTooSkewed"),             # clock skew: retried, not refused
])
def test_outages_throttling_and_clock_skew_are_waited_out(exc: Exception) -> None:
    assert is_retryable(exc)
    assert consumer_retries(exc)  # the batch consumer waits them out rather than dead-lettering


@pytest.mark.parametrize("exc", [
    _client_error(404, "NoSuchKey"),
    _client_error(403, "AccessDenied"),
    _client_error(403, "SignatureDoesNotMatch"),
    _client_error(400, "InvalidRequest"),
    ValueError("not S3 at all"),
])
def test_answers_are_not_retried(exc: Exception) -> None:
    assert not is_retryable(exc)


def test_missing_objects_are_told_apart_from_outages() -> None:
    assert is_missing(_client_error(404, "NoSuchKey"))
    assert not is_missing(EndpointConnectionError(endpoint_url="http://s3"))
    assert not is_missing(_client_error(503, "SlowDown"))


def test_a_group_of_concurrent_copies_failing_on_an_outage_is_waited_out() -> None:
    outage = EndpointConnectionError(endpoint_url="http://s3")
    assert consumer_retries(ExceptionGroup("copies", [outage, ExceptionGroup("nested", [outage])]))
    # One fault in the group that is not infrastructure: the batch is not simply waited out.
    assert not consumer_retries(ExceptionGroup("copies", [outage, ValueError("a bug")]))
