"""The remote rules feed's pure part (addons/rules/remote.py): one poll against a real aiohttp server
on 127.0.0.1, and what each answer means for the documents in force."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from addons.rules.remote import MAX_FEED_BYTES, FeedAnswer, RemoteFeed, digest_of, fetch
from tests.conftest import free_port

BODY = b"service: a\nhosts: [a.test]\n---\nservice: b\nhosts: [b.test]\n"
FEED_TOKEN = "feed-token-9f2e71c4"


class FeedServer:
    """Serves BODY with an ETag, 304 when asked with it, a status when told to; records each request."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.seen: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if self.status is not None:
            return web.Response(status=self.status, text="down")
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=BODY, headers={"ETag": '"v1"', "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"})


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    srv = FeedServer()
    app = web.Application()
    app.router.add_get("/rules", srv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}/rules?token={FEED_TOKEN}"
    yield srv
    await runner.cleanup()


async def test_first_poll_offers_the_documents_then_304_changes_nothing(server: FeedServer) -> None:
    feed = RemoteFeed.for_url(server.url)
    assert feed.shown == server.url.replace(FEED_TOKEN, "***") and not feed.settled_for_readiness()
    offer = feed.offer(await fetch(feed, 1), documents_in_force=0, forced=False)
    assert offer is not None
    assert [name for name, _ in offer.documents] == [f"{feed.shown}#1", f"{feed.shown}#2"]
    assert offer.documents[1][1] == "service: b\nhosts: [b.test]\n" and offer.text == BODY.decode()
    assert feed.etag == '"v1"' and feed.last_error is None and feed.settled_for_readiness()
    feed.accepted(offer.documents, offer.digest)
    assert feed.offer(await fetch(feed, 1), 2, False) is None  # sent If-None-Match, got 304
    assert server.seen[1]["If-None-Match"] == '"v1"' and feed.not_modified == 1
    status = feed.status(10)
    assert status is not None and status["documents"] == [f"{feed.shown}#1", f"{feed.shown}#2"]
    assert FEED_TOKEN not in str(status)


async def test_a_forced_poll_sends_no_validators_and_retries_a_refused_body(server: FeedServer) -> None:
    feed = RemoteFeed.for_url(server.url)
    offer = feed.offer(await fetch(feed, 1), 0, False)
    assert offer is not None
    feed.refused(offer.documents, offer.digest, ["feed#1:1: service: Field required"])
    feed.etag = None  # a server without validators: the same refused body again is not retried
    assert feed.offer(await fetch(feed, 1), 0, forced=False) is None
    feed.force = True
    forced = feed.force
    answer = await fetch(feed, 1)
    assert "If-None-Match" not in server.seen[-1] and not feed.force
    assert feed.offer(answer, 0, forced) is not None  # SIGHUP: the refused body is tried once more


async def test_failures_keep_the_documents_in_force_and_say_why_without_the_secret(server: FeedServer) -> None:
    feed = RemoteFeed.for_url(server.url)
    server.status = 503
    assert feed.offer(await fetch(feed, 1), 2, False) is None
    assert feed.last_error == "HTTP 503 Service Unavailable" and feed.failures == 1
    dead = RemoteFeed.for_url(f"http://user:{FEED_TOKEN}@127.0.0.1:{free_port()}/rules?token={FEED_TOKEN}")
    answer = await fetch(dead, 1)  # nothing listens there: refused at once
    assert answer.error is not None and answer.error.startswith("Client")
    dead.offer(answer, 2, False)
    assert dead.last_error is not None and FEED_TOKEN not in dead.last_error and dead.failures == 1


def test_bodies_that_are_not_a_feed_are_failures() -> None:
    feed = RemoteFeed.for_url("http://127.0.0.1:9/rules")
    assert feed.offer(FeedAnswer(200, b"\xff\xfe not text"), 0, False) is None
    assert feed.last_error == "body is not UTF-8 text"
    assert feed.offer(FeedAnswer(200, b"x" * (MAX_FEED_BYTES + 1)), 0, False) is None
    assert feed.last_error == "body larger than 16 MiB"
    assert feed.offer(FeedAnswer(200, b"# nothing\n---\n"), 3, False) is None
    assert feed.last_error is not None and feed.last_error.startswith("the feed is empty; keeping the 3")
    assert feed.failures == 3 and feed.documents == []


def test_the_body_in_force_served_again_is_no_offer_but_marks_the_feed_in_force() -> None:
    feed = RemoteFeed.for_url("http://127.0.0.1:9/rules")
    feed.digest, feed.in_force = digest_of(BODY), "cache"  # the saved copy, loaded at start
    assert feed.offer(FeedAnswer(200, BODY), 2, False) is None
    assert feed.in_force == "feed"
