"""Token credentials (SPEC 6) against a local fake token endpoint, with the real MemoryStore and a real
RedisStore: caching, refresh ahead of expiry, one fetch for concurrent callers and instances,
rejected tokens, backoff after failures, OAuth2 client authentication as RFC 6749 writes it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import aiohttp
import pytest
from aiohttp import web

from addons.chain.context import GatewayContext
from addons.chain.rules import CredentialContext
from addons.credentials import make_credential
from addons.credentials.oauth2_token import OAuth2Token
from addons.credentials.schema import OAuth2ClientCredentials, WechatTokenCredentials
from addons.credentials.tokens import Token, TokenCredential
from addons.credentials.wechat_token import PLACEHOLDER_TOKEN, WechatToken
from addons.errors import GatewayError
from addons.outbound import OutboundRequest
from addons.redact import Redactor
from addons.state.memory import MemoryStore
from addons.state.redis import RedisStore
from tests.conftest import until

SECRET = "wx-secret-0123456789abcdef"
CLIENT_SECRET = "cl+ient/secret=&:x"  # characters that form-urlencoding must escape (RFC 6749 2.3.1)
CLIENT_ID = "client id:1"
REDIS_TIMEOUT = 0.5  # generous: these tests are about tokens, not Redis latency


# -- a fake token endpoint ------------------------------------------------------------------------

@dataclass
class TokenServer:
    """WeChat's GET /cgi-bin/token and an OAuth2 POST /oauth/token, counting what they are asked."""

    mode: str = "ok"  # ok | errcode | http500 | hang | garbage | oauth_error
    expires_in: int | None = 7200
    delay: float = 0.0
    issued: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._wechat)
        app.router.add_get("/base/cgi-bin/token", self._wechat)
        app.router.add_post("/oauth/token", self._oauth)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.stopping.set()  # lets a hanging handler end, so the server shuts down at once
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def fetches(self) -> int:
        return len(self.requests)

    def _new_token(self, prefix: str) -> str:
        token = f"{prefix}-{len(self.issued) + 1:04d}-{time.monotonic_ns()}"
        self.issued.append(token)
        return token

    async def _common(self, request: web.Request) -> web.Response | None:
        body = await request.read()
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "headers": dict(request.headers), "body": body})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "hang":
            try:
                await asyncio.wait_for(self.stopping.wait(), 30)
            except TimeoutError:
                pass
        if self.mode == "http500":
            return web.Response(status=500, text="internal error")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>not json</html>", content_type="text/html")
        return None

    async def _wechat(self, request: web.Request) -> web.Response:
        early = await self._common(request)
        if early is not None:
            return early
        if self.mode == "errcode":
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret rid: 1234"})
        body: dict[str, Any] = {"access_token": self._new_token("wx-token")}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    async def _oauth(self, request: web.Request) -> web.Response:
        early = await self._common(request)
        if early is not None:
            return early
        if self.mode == "oauth_error":
            return web.json_response({"error": "invalid_client", "error_description": "bad client"}, status=401)
        body: dict[str, Any] = {"access_token": self._new_token("oauth-token"), "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)


class Clock:
    """A wall clock the test moves (token times and backoff windows run on it)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A store wrapper counting reads: the hot path must not touch the store."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    srv = await TokenServer().start()
    yield srv
    await srv.stop()


class Fleet:
    """Gateway contexts (instances) for one test, closed at its end."""

    def __init__(self) -> None:
        self.contexts: list[GatewayContext] = []
        self.credentials: list[TokenCredential] = []

    def context(self, store: Any, service: str = "wechat", upstream_url: str = "") -> CredentialContext:
        gw = GatewayContext()
        gw.store = store
        gw.metrics.set_names({service}, set(), set())
        self.contexts.append(gw)
        return CredentialContext(gw, service, upstream_url)

    def wechat(self, store: Any, url: str, **kwargs: Any) -> WechatToken:
        options = {k: kwargs.pop(k) for k in ("clock", "poll_interval") if k in kwargs}
        spec = WechatTokenCredentials(type="wechat_token", app_id="wx-app-1", secret=SECRET,
                                      token_url=f"{url}/cgi-bin/token", **kwargs)
        credential = WechatToken(spec, self.context(store), **options)
        self.credentials.append(credential)
        return credential

    def oauth(self, store: Any, url: str, **kwargs: Any) -> OAuth2Token:
        options = {k: kwargs.pop(k) for k in ("clock",) if k in kwargs}
        spec = OAuth2ClientCredentials(type="oauth2_client_credentials", token_url=f"{url}/oauth/token",
                                       client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs)
        credential = OAuth2Token(spec, self.context(store, service="api"), **options)
        self.credentials.append(credential)
        return credential

    async def close(self) -> None:
        for credential in self.credentials:
            await credential.close()
        for gw in self.contexts:
            if gw.session is not None:
                await gw.session.close()
            if gw.store is not None:
                await gw.store.close()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    yield f
    await f.close()


@pytest.fixture(params=["memory", "redis"])
def store_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """A fresh client of one shared store per call: every gateway instance has its own client."""
    if request.param == "memory":
        shared = MemoryStore()

        class Shared:  # instances of one process share the MemoryStore itself; closing it is the test's
            def __getattr__(self, name: str) -> Any:
                return getattr(shared, name)

            async def close(self) -> None:
                return None

        return Shared
    url = request.getfixturevalue("redis_url")
    return lambda: RedisStore(url, timeout=REDIS_TIMEOUT)


def outbound(query: list[tuple[str, str]] | None = None) -> OutboundRequest:
    return OutboundRequest("GET", "http", "127.0.0.1", 80, "/cgi-bin/message/custom/send", query or [])


async def token_of(credential: TokenCredential) -> str:
    req = outbound([("access_token", "apps-own-token"), ("x", "1")])
    await credential.apply(req)
    value = req.get_query("access_token")
    assert value is not None
    return value


def refreshes(credential: TokenCredential, result: str) -> float:
    gw = credential.services.gw  # type: ignore[attr-defined]  # the test's own GatewayContext
    value = gw.metrics.registry.get_sample_value(
        "gateway_token_refreshes_total", {"service": credential.service, "result": result})
    return value or 0.0


# -- WeChat ---------------------------------------------------------------------------------------

async def test_cache_hit_one_fetch_for_many_applies_and_app_token_replaced(
        server: TokenServer, fleet: Fleet, store_factory: Callable[[], Any]) -> None:
    counting = CountingStore(store_factory())
    credential = fleet.wechat(counting, server.url)
    req = outbound([("access_token", "apps-own-token"), ("openid", "o1"), ("access_token", "another")])
    await credential.apply(req)
    assert server.fetches == 1
    token = server.issued[0]
    # Replaced, never merged: exactly one access_token, the gateway's; other parameters kept.
    assert [v for k, v in req.query if k == "access_token"] == [token]
    assert req.get_query("openid") == "o1"
    query = server.requests[0]["query"]
    assert query == {"grant_type": "client_credential", "appid": "wx-app-1", "secret": SECRET}
    reads = counting.gets
    for _ in range(200):
        assert await token_of(credential) == token
    assert server.fetches == 1
    assert counting.gets == reads, "the hot path read the state store"
    assert refreshes(credential, "success") == 1


async def test_concurrent_applies_make_one_fetch(server: TokenServer, fleet: Fleet,
                                                 store_factory: Callable[[], Any]) -> None:
    server.delay = 0.2  # every caller arrives while the first fetch is in flight
    credential = fleet.wechat(store_factory(), server.url)
    tokens = await asyncio.gather(*(token_of(credential) for _ in range(50)))
    assert server.fetches == 1
    assert set(tokens) == {server.issued[0]}


async def test_two_instances_sharing_a_store_make_one_fetch(server: TokenServer, fleet: Fleet,
                                                            store_factory: Callable[[], Any]) -> None:
    server.delay = 0.2
    first = fleet.wechat(store_factory(), server.url)
    second = fleet.wechat(store_factory(), server.url)
    tokens = await asyncio.gather(*(token_of(c) for _ in range(25) for c in (first, second)))
    assert server.fetches == 1
    assert set(tokens) == {server.issued[0]}


async def test_waiter_takes_over_the_lock_of_a_holder_that_died(server: TokenServer, fleet: Fleet,
                                                                store_factory: Callable[[], Any]) -> None:
    store = store_factory()
    credential = fleet.wechat(store, server.url)
    # Another instance took the refresh lock and died: it runs out at its TTL, then this one fetches.
    assert await store.acquire(credential.key, 0.5) is not None
    started = time.monotonic()
    assert await token_of(credential) == server.issued[0]
    assert 0.4 <= time.monotonic() - started < 5
    assert server.fetches == 1


async def test_refresh_ahead_of_expiry_in_the_background(server: TokenServer, fleet: Fleet) -> None:
    clock = Clock()
    credential = fleet.wechat(MemoryStore(), server.url, clock=clock)
    first = await token_of(credential)
    clock.now += 7200 - 300 - 1  # just before refresh_before (300 s) ahead of expiry
    assert await token_of(credential) == first
    assert server.fetches == 1
    clock.now += 2  # now due: the call still gets the valid token at once, a new one is fetched beside it
    assert await token_of(credential) == first
    await until(lambda: server.fetches == 2, what="the renewal")
    await until(lambda: credential._token is not None and credential._token.value == server.issued[1],
                what="the new token in use")
    assert await token_of(credential) == server.issued[1]
    assert server.fetches == 2


async def test_expired_token_is_not_sent_the_call_waits_for_a_new_one(server: TokenServer, fleet: Fleet) -> None:
    clock = Clock()
    credential = fleet.wechat(MemoryStore(), server.url, clock=clock)
    first = await token_of(credential)
    clock.now += 7200
    second = await token_of(credential)
    assert second != first and second == server.issued[1]


async def test_instance_adopts_the_token_another_instance_renewed(server: TokenServer, fleet: Fleet,
                                                                  store_factory: Callable[[], Any]) -> None:
    clock = Clock()
    first = fleet.wechat(store_factory(), server.url, clock=clock)
    second = fleet.wechat(store_factory(), server.url, clock=clock)
    assert await token_of(first) == await token_of(second) == server.issued[0]
    clock.now += 7200 - 200  # both due
    await token_of(first)
    await until(lambda: server.fetches == 2, what="the renewal")
    await until(lambda: first._token is not None and first._token.value == server.issued[1], what="renewed")
    await token_of(second)  # due here too: finds the new token in the store instead of fetching
    await until(lambda: second._token is not None and second._token.value == server.issued[1], what="adopted")
    assert server.fetches == 2


async def test_rejected_token_is_refreshed_once(server: TokenServer, fleet: Fleet,
                                                store_factory: Callable[[], Any]) -> None:
    credential = fleet.wechat(store_factory(), server.url)
    assert credential.rejected(200, "40001") and credential.rejected(200, "40014") and credential.rejected(200, "42001")
    assert not credential.rejected(200, "45009") and not credential.rejected(200, None)
    assert not credential.rejected(401, None)
    first = await token_of(credential)
    await credential.refresh()
    assert server.fetches == 2
    assert await token_of(credential) == server.issued[1] != first


async def test_burst_of_rejections_across_instances_makes_one_refresh(server: TokenServer, fleet: Fleet,
                                                                      store_factory: Callable[[], Any]) -> None:
    first = fleet.wechat(store_factory(), server.url)
    second = fleet.wechat(store_factory(), server.url)
    old = await token_of(first)
    assert await token_of(second) == old
    server.delay = 0.1

    async def call(credential: TokenCredential, pause: float) -> str:
        # As forward() does: apply, the provider says 40001, refresh, apply again.
        await token_of(credential)
        await asyncio.sleep(pause)  # some answers arrive only after the refresh is done
        await credential.refresh()
        return await token_of(credential)

    results = await asyncio.gather(*(call(c, i * 0.02) for i in range(20) for c in (first, second)))
    assert server.fetches == 2, "a rejected token that was already replaced was refreshed again"
    assert set(results) == {server.issued[1]}


async def test_rejected_token_is_not_adopted_again_from_the_store(server: TokenServer, fleet: Fleet) -> None:
    store = MemoryStore()
    credential = fleet.wechat(store, server.url)
    old = await token_of(credential)
    server.mode = "errcode"  # the refresh fails: the store still holds the rejected token
    with pytest.raises(GatewayError):
        await credential.refresh()
    with pytest.raises(GatewayError) as caught:
        await token_of(credential)  # backing off: fails at once, and never sends the rejected token
    assert caught.value.code == -1002
    assert credential._token is None or credential._token.value != old
    assert server.fetches == 2


async def test_failed_fetch_is_1002_then_backs_off(server: TokenServer, fleet: Fleet) -> None:
    server.mode = "errcode"
    clock = Clock()
    credential = fleet.wechat(MemoryStore(), server.url, clock=clock)
    with pytest.raises(GatewayError) as caught:
        await token_of(credential)
    error = caught.value
    assert error.code == -1002
    assert error.message == "wechat: provider refused the gateway's credentials (token fetch failed)"
    assert "40125" in error.detail and "invalid AppSecret" in error.detail
    assert SECRET not in f"{error} {error.detail} {error!r}"
    assert server.fetches == 1
    # Within the backoff window: the same error at once, the token endpoint is not asked.
    for _ in range(20):
        with pytest.raises(GatewayError) as again:
            await token_of(credential)
        assert again.value.code == -1002 and again.value.message == error.message
    assert server.fetches == 1
    clock.now += 1.01  # past the first window (1 s): one new attempt, which fails too
    with pytest.raises(GatewayError):
        await token_of(credential)
    assert server.fetches == 2
    clock.now += 1.5  # the window doubled to 2 s: still backing off
    with pytest.raises(GatewayError):
        await token_of(credential)
    assert server.fetches == 2
    server.mode = "ok"
    clock.now += 0.6
    assert await token_of(credential) == server.issued[0]
    assert server.fetches == 3
    assert refreshes(credential, "error") == 2 and refreshes(credential, "success") == 1


async def test_a_failure_on_one_instance_backs_off_the_fleet(server: TokenServer, fleet: Fleet,
                                                             store_factory: Callable[[], Any]) -> None:
    server.mode = "errcode"
    first = fleet.wechat(store_factory(), server.url)
    second = fleet.wechat(store_factory(), server.url)
    with pytest.raises(GatewayError):
        await token_of(first)
    with pytest.raises(GatewayError) as caught:
        await token_of(second)
    assert caught.value.code == -1002 and "another gateway instance" in caught.value.detail
    assert server.fetches == 1


@pytest.mark.parametrize("mode, words", [
    ("http500", "HTTP 500"),
    ("garbage", "not JSON"),
    ("hang", "did not answer within"),
])
async def test_every_kind_of_fetch_failure_is_1002(server: TokenServer, fleet: Fleet, mode: str, words: str) -> None:
    server.mode = mode
    credential = fleet.wechat(MemoryStore(), server.url, timeout="300ms")
    started = time.monotonic()
    with pytest.raises(GatewayError) as caught:
        await token_of(credential)
    assert time.monotonic() - started < 3
    assert caught.value.code == -1002 and words in caught.value.detail
    assert SECRET not in caught.value.detail


async def test_unreachable_token_endpoint_is_1002_without_the_secret(fleet: Fleet) -> None:
    from tests.fakes import refused_url

    credential = fleet.wechat(MemoryStore(), refused_url())
    with pytest.raises(GatewayError) as caught:
        await token_of(credential)
    assert caught.value.code == -1002 and "unreachable" in caught.value.detail
    assert SECRET not in caught.value.detail


async def test_default_token_url_keeps_the_upstream_base_path(server: TokenServer, fleet: Fleet) -> None:
    spec = WechatTokenCredentials(type="wechat_token", app_id="wx-app-1", secret=SECRET)
    credential = make_credential(spec, fleet.context(MemoryStore(), upstream_url=f"{server.url}/base/"))
    assert isinstance(credential, WechatToken)
    fleet.credentials.append(credential)
    await token_of(credential)
    assert server.requests[0]["path"] == "/base/cgi-bin/token"


async def test_expires_in_missing_uses_wechat_default(server: TokenServer, fleet: Fleet) -> None:
    server.expires_in = None
    credential = fleet.wechat(MemoryStore(), server.url)
    await token_of(credential)
    token = credential._token
    assert token is not None and token.expires_at - token.issued_at == 7200


async def test_app_token_call_is_answered_locally(fleet: Fleet) -> None:
    credential = fleet.wechat(MemoryStore(), "http://127.0.0.1:9")
    body = credential.local_answer("/cgi-bin/token", "GET")
    assert body is not None
    assert json.loads(body) == {"access_token": PLACEHOLDER_TOKEN, "expires_in": 7200}
    assert credential.local_answer("/cgi-bin/stable_token", "POST") == body
    assert credential.local_answer("/cgi-bin/message/custom/send", "POST") is None
    assert credential.local_answer("/cgi-bin/tokenizer", "GET") is None


async def test_tokens_are_registered_for_redaction_and_never_in_repr(server: TokenServer, fleet: Fleet) -> None:
    credential = fleet.wechat(MemoryStore(), server.url)

    class Compiled:
        redactor = Redactor()

    gw = credential.services.gw  # type: ignore[attr-defined]
    gw.compiled = Compiled()  # type: ignore[assignment]
    token = await token_of(credential)
    assert Compiled.redactor.text(f"provider said {token} is bad") == "provider said *** is bad"
    assert token in credential.secrets() and SECRET in credential.secrets()
    for text in (repr(credential), repr(credential._token), repr(credential.spec), str(credential.spec)):
        assert token not in text and SECRET not in text


def test_stored_token_round_trip_and_short_lifetimes() -> None:
    token = Token.make("abcdef-token", 1000.0, 7200.0, 300.0)
    assert (token.expires_at, token.refresh_at, token.usable_until) == (8200.0, 7900.0, 8195.0)
    back = Token.decode(token.encode(), 300.0)
    assert back == token
    assert Token.decode(b"not json", 300.0) is None and Token.decode(None, 300.0) is None
    short = Token.make("abcdef-token", 0.0, 60.0, 300.0)
    assert short.refresh_at == 30.0  # never due at birth, whatever refresh_before says


# -- OAuth2 ---------------------------------------------------------------------------------------

async def test_oauth2_client_secret_basic(server: TokenServer, fleet: Fleet) -> None:
    credential = fleet.oauth(MemoryStore(), server.url, scope="read write")
    req = outbound()
    req.headers["Authorization"] = "Bearer apps-own"
    req.headers["authorization"] = "Basic apps-other"
    await credential.apply(req)
    assert req.headers.getall("Authorization") == [f"Bearer {server.issued[0]}"]
    seen = server.requests[0]
    assert seen["method"] == "POST"
    assert seen["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
    # RFC 6749 2.3.1: id and secret form-urlencoded, joined by ':', base64 (Basic, RFC 7617).
    expected = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode()).decode()
    assert seen["headers"]["Authorization"] == f"Basic {expected}"
    form = dict(parse_qsl(seen["body"].decode(), keep_blank_values=True))
    assert form == {"grant_type": "client_credentials", "scope": "read write"}


async def test_oauth2_client_secret_post(server: TokenServer, fleet: Fleet) -> None:
    credential = fleet.oauth(MemoryStore(), server.url, auth_method="client_secret_post")
    req = outbound()
    await credential.apply(req)
    assert req.headers["Authorization"] == f"Bearer {server.issued[0]}"
    seen = server.requests[0]
    assert "Authorization" not in seen["headers"]
    form = dict(parse_qsl(seen["body"].decode(), keep_blank_values=True))
    assert form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


async def test_oauth2_401_refresh_and_default_lifetime(server: TokenServer, fleet: Fleet) -> None:
    server.expires_in = None
    credential = fleet.oauth(MemoryStore(), server.url)
    assert credential.rejected(401, None) and not credential.rejected(403, None)
    assert not credential.rejected(500, None)
    req = outbound()
    await credential.apply(req)
    token = credential._token
    assert token is not None and token.expires_at - token.issued_at == 3600  # RFC 6749 5.1: optional
    await credential.refresh()
    req = outbound()
    await credential.apply(req)
    assert req.headers["Authorization"] == f"Bearer {server.issued[1]}"
    assert server.fetches == 2
    assert credential.local_answer("/oauth/token", "POST") is None


async def test_oauth2_error_answer_is_1002_with_the_rfc_error(server: TokenServer, fleet: Fleet) -> None:
    server.mode = "oauth_error"
    credential = fleet.oauth(MemoryStore(), server.url)
    with pytest.raises(GatewayError) as caught:
        await credential.apply(outbound())
    assert caught.value.code == -1002
    assert caught.value.message == "api: provider refused the gateway's credentials (token fetch failed)"
    assert "HTTP 401" in caught.value.detail and "invalid_client" in caught.value.detail
    assert CLIENT_SECRET not in caught.value.detail
    with pytest.raises(GatewayError):
        await credential.apply(outbound())
    assert server.fetches == 1


class PlainServices:
    """Only what a token credential is given (addons/credentials/services.py): no gateway at all."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.service, self.upstream_url = "plain", ""
        self.session = session
        self.masked: list[str] = []
        self.counted: list[str] = []

    def store(self) -> None:
        return None  # no state store yet: the credential keeps a private one

    def http(self) -> aiohttp.ClientSession:
        return self.session

    def add_secret(self, value: str) -> None:
        self.masked.append(value)

    def token_refreshed(self, result: str) -> None:
        self.counted.append(result)


async def test_a_token_credential_needs_only_its_services(server: TokenServer) -> None:
    async with aiohttp.ClientSession() as session:
        services = PlainServices(session)
        spec = WechatTokenCredentials(type="wechat_token", app_id="wx-app-1", secret=SECRET,
                                      token_url=f"{server.url}/cgi-bin/token")
        credential = make_credential(spec, services)
        try:
            req = outbound()
            await credential.apply(req)
            assert req.get_query("access_token") == server.issued[0]
            assert services.masked == [server.issued[0]] and services.counted == ["success"]
            server.mode = "errcode"
            with pytest.raises(GatewayError) as caught:
                await credential.refresh()  # the provider rejected the token this call sent
            assert caught.value.code == -1002 and SECRET not in caught.value.detail
            assert services.counted == ["success", "error"] and server.fetches == 2
        finally:
            await credential.close()
