"""LeanS3's listing against a stand-in S3 server that answers what real servers rarely do:
a page XML cannot carry as it is, a truncated page without a continuation token, a token that
comes back again. (The listing against the real S3 server: tests/integration/test_s3_signing.py.)"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote_plus

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from shared.s3lean import LeanS3

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
Answer = Callable[[web.Request], str]


def page(keys: list[str], *, truncated: bool = False, token: str | None = None) -> str:
    contents = "".join(f"<Contents><Key>{k}</Key><Size>{len(k)}</Size></Contents>" for k in keys)
    more = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">{contents}'
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{more}</ListBucketResult>")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], LeanS3]]:
    """A stand-in server on a free port; `serve(answer)` gives a client of it that `answer` serves."""
    answers: list[Answer] = []
    clients: list[LeanS3] = []

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=answers[-1](request), content_type="application/xml")

    app = web.Application()
    app.router.add_get("/{bucket}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]

    def start(answer: Answer) -> LeanS3:
        answers.append(answer)
        clients.append(LeanS3(f"http://127.0.0.1:{port}", "access", "secret", "us-east-1"))
        return clients[-1]

    yield start
    for client in clients:
        await client.close()
    await runner.cleanup()


async def listed(client: LeanS3) -> list[tuple[str, int]]:
    return [item async for item in client.list("bucket", "p/")]


async def test_pages_are_followed_by_their_tokens(serve: Callable[[Answer], LeanS3]) -> None:
    def answer(request: web.Request) -> str:
        token = request.query.get("continuation-token")
        assert request.query["prefix"] == "p/" and request.query["list-type"] == "2"
        return page(["p/a", "p/b"], truncated=True, token="t1") if token is None else page(["p/c"])

    assert await listed(serve(answer)) == [("p/a", 3), ("p/b", 3), ("p/c", 3)]


async def test_a_page_xml_cannot_carry_is_asked_for_again_url_encoded(serve: Callable[[Answer], LeanS3]) -> None:
    awkward = "p/line\x01break+plus sign"

    def answer(request: web.Request) -> str:
        if request.query.get("encoding-type") == "url":
            return page([quote_plus(awkward)])
        return page([awkward])  # a control character: not well-formed XML

    assert await listed(serve(answer)) == [(awkward, len(quote_plus(awkward)))]


@pytest.mark.parametrize("token", [None, "again"], ids=["no-token", "repeated-token"])
async def test_a_truncated_listing_without_a_new_token_is_an_error_not_a_loop(
        serve: Callable[[Answer], LeanS3], token: str | None) -> None:
    def answer(request: web.Request) -> str:
        return page(["p/a"], truncated=True, token=token)

    with pytest.raises(ClientError, match="truncated without a new continuation token"):
        await listed(serve(answer))
