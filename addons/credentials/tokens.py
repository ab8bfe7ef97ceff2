"""Token credentials (SPEC 6): WeChat's `access_token` and OAuth2 client credentials (RFC 6749 4.4).

A provider token is fetched by the gateway, never by the apps, and kept at two levels:

- a process-local copy, read on every call without touching the state store (the hot path is one
  attribute read and a clock comparison);
- the state store (Redis when configured), so every gateway instance uses the same token. The store
  is consulted only when the local copy is missing, due for refresh, or rejected by the provider.

One refresh at a time across the fleet: a lock in the store (with a TTL, so a crashed holder cannot
block the others for longer than that); the instances that do not get it poll the store for the
holder's token instead of fetching their own. That matters for WeChat, where every fetch starts the
5-minute countdown on the previous token: a fleet fetching independently would invalidate each
other's tokens all day. Inside one process an asyncio lock lets one coroutine do the work while the
others wait for it.

Tokens are renewed `refresh_before` ahead of expiry in the background, while calls keep using the
still-valid token; a missing or expired token is fetched while the call waits. A provider answer
saying the token is invalid (`rejected`) leads to `refresh()`, which first checks whether someone
else already replaced the rejected token (compared by value), so a burst of rejected calls makes
one fetch, not one each.

A failed fetch fails the call with -1002 and starts a backoff (1 s doubling to 60 s) during which
calls fail at once without asking the token endpoint: a wrong secret must not become a request
storm. The failure is also written to the store, so the other instances back off with it.

Neither the configured secret nor a token is ever written to a log, an error message or a repr:
fetched tokens are registered with the gateway's redactor, and error details are scrubbed of the
secret before they leave this module."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

from addons.credentials.schema import OAuth2ClientCredentials, WechatTokenCredentials
from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest
from addons.state.base import StateStore, StateUnavailable
from addons.state.memory import MemoryStore

log = logging.getLogger("gateway")

# What an app's own call to WeChat's token endpoint gets. Not a secret and not a token: the gateway
# replaces whatever access_token the app sends, so SDKs (wechatpy) only need *something* to send.
PLACEHOLDER_TOKEN = "gateway-managed-token-placeholder-the-gateway-injects-the-real-access-token"
PLACEHOLDER_BODY = json.dumps({"access_token": PLACEHOLDER_TOKEN, "expires_in": 7200}).encode()
WECHAT_TOKEN_PATHS = frozenset({"/cgi-bin/token", "/cgi-bin/stable_token"})

# WeChat errcodes that mean "this access_token is not valid": invalid, malformed, expired.
WECHAT_TOKEN_INVALID = frozenset({"40001", "40014", "42001"})
# What the usual token-fetch errcodes mean, for the log line of a failed fetch.
WECHAT_FETCH_HINTS = {
    40001: "AppSecret wrong or not matching the appid",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40125: "invalid AppSecret",
    40164: "the gateway's IP address is not on the account's IP whitelist",
    41004: "AppSecret missing",
    89503: "the gateway's IP address needs the account administrator's confirmation",
    -1: "WeChat system busy",
}

MAX_TOKEN_BODY = 64 * 1024  # a token answer is a few hundred bytes; anything far larger is not one
BACKOFF_START = 1.0  # seconds of fail-fast after the first failed fetch, doubling per failure
BACKOFF_MAX = 60.0
POLL_INTERVAL = 0.05  # how often an instance waiting for another's refresh reads the store

# The token each call injected, so refresh() knows which token the provider rejected even when other
# calls have refreshed in between. apply() and refresh() run in the same task (forward() awaits both),
# so the value set by apply() is the one refresh() reads. Keyed by credential object identity.
_APPLIED: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("gateway_token_applied",
                                                                                  default=None)


@dataclass(frozen=True)
class Token:
    """One provider token and its times (wall-clock seconds, shared with other instances)."""

    value: str = field(repr=False)
    issued_at: float
    expires_at: float
    refresh_at: float  # renew from here on (in the background while still usable)
    usable_until: float  # past this the token is not sent any more: the call waits for a new one

    @classmethod
    def make(cls, value: str, issued_at: float, lifetime: float, refresh_before: float) -> Token:
        # A short-lived token (a test server's, or an OAuth2 server's 60 s one) with the default lead
        # would be due for refresh from the moment it is issued; keep at least half its life.
        lead = min(refresh_before, lifetime / 2)
        # Stop sending a token a little before its end: clocks differ and the call takes time.
        skew = min(5.0, lifetime / 10)
        return cls(value, issued_at, issued_at + lifetime, issued_at + lifetime - lead,
                   issued_at + lifetime - skew)

    def encode(self) -> bytes:
        return json.dumps({"v": self.value, "iat": self.issued_at, "exp": self.expires_at}).encode()

    @classmethod
    def decode(cls, raw: bytes | None, refresh_before: float) -> Token | None:
        """A stored token, with refresh times by this instance's own settings; None if unreadable."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            value, issued, expires = data["v"], float(data["iat"]), float(data["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(value, str) or not value or expires <= issued:
            return None
        return cls.make(value, issued, expires - issued, refresh_before)


class FetchFailed(Exception):
    """A token fetch that did not give a token; `detail` is for the log (scrubbed of the secret)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Fetched:
    value: str = field(repr=False)
    lifetime: float  # seconds
    token_type: str | None = None


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lifetime(value: Any, default: float) -> float:
    """`expires_in` as seconds: a number or a numeric string (some servers send "3600"); else default."""
    if isinstance(value, bool):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if 0 < seconds < 10 * 365 * 86400 else default


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        raise FetchFailed(f"token endpoint answer is not JSON: {_clip(body[:200].decode('utf-8', 'replace'))!r}"
                          ) from None
    if not isinstance(data, dict):
        raise FetchFailed(f"token endpoint answered a JSON {type(data).__name__}, not an object")
    return data


class TokenCredential:
    """What WeChat and OAuth2 share: caching, the fleet lock, backoff, metrics, redaction.

    Subclasses say how to fetch (`_fetch`), how to inject (`_inject`), which answers mean the token
    was rejected (`rejected`) and under which store key the token lives (`key`)."""

    kind = "token"
    default_lifetime = 3600.0

    def __init__(self, spec: WechatTokenCredentials | OAuth2ClientCredentials, context: Any, *,
                 clock: Callable[[], float] = time.time, poll_interval: float = POLL_INTERVAL,
                 backoff_start: float = BACKOFF_START, backoff_max: float = BACKOFF_MAX) -> None:
        self.spec = spec
        self.service: str = context.service
        self._gw = getattr(context, "gw", None)
        self._clock = clock  # wall clock: token times are shared with other instances through the store
        self._poll = poll_interval
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._timeout = float(spec.timeout)
        self._refresh_before = float(spec.refresh_before)
        # A holder that crashed mid-fetch blocks the fleet for at most this long.
        self._lock_ttl = self._timeout + 5.0
        # Waiting for another instance's refresh: its fetch, plus the time to take over a dead holder's lock.
        self._wait_timeout = self._lock_ttl + 1.0
        self._token: Token | None = None
        self._rejected: str | None = None  # the last value a provider called invalid: never adopted again
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed fetches (here or, through the store, elsewhere)
        self._retry_at = 0.0  # clock() before which no fetch is tried
        self._last_detail = ""
        self._registered: str | None = None  # last value handed to the redactor
        self._private_store: MemoryStore | None = None
        self._secret = spec.secret if isinstance(spec, WechatTokenCredentials) else spec.client_secret

    # -- what subclasses define -----------------------------------------------------------------

    @property
    def key(self) -> str:
        raise NotImplementedError

    async def _fetch(self, session: aiohttp.ClientSession) -> Fetched:
        raise NotImplementedError

    def _inject(self, req: OutboundRequest, value: str) -> None:
        raise NotImplementedError

    def rejected(self, status: int, provider_code: str | None) -> bool:
        raise NotImplementedError

    def local_answer(self, path: str, http_method: str) -> bytes | None:
        return None

    # -- the Credential protocol ----------------------------------------------------------------

    async def apply(self, req: OutboundRequest) -> None:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            token = await self._current()
        self._inject(req, token.value)
        _APPLIED.set((id(self), token.value))

    async def refresh(self) -> None:
        applied = _APPLIED.get()
        if applied is not None and applied[0] == id(self):
            stale: str | None = applied[1]
        else:
            stale = self._token.value if self._token is not None else None
        if stale is not None:
            # Known bad: no call in this process sends it again, and it is not re-adopted from the store.
            self._rejected = stale
            if self._token is not None and self._token.value == stale:
                self._token = None
        async with self._lock:
            token = self._token
            if token is not None and token.value != stale and self._clock() < token.usable_until:
                return  # another call already replaced the rejected token
            await self._renew(stale, need_fresh=False)

    def secrets(self) -> list[str]:
        values = [self._secret.get_secret_value()]
        if self._token is not None:
            # A rules reload builds a new redactor from these: the live token must stay masked too.
            values.append(self._token.value)
        return values

    async def close(self) -> None:
        task = self._background
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._private_store is not None:
            await self._private_store.close()

    # -- getting a token ------------------------------------------------------------------------

    async def _current(self) -> Token:
        """The token for a call whose local copy is missing or due for refresh."""
        token = self._token
        if token is not None and self._clock() < token.usable_until:
            # Due but still good: this call goes on with it, the renewal happens beside it.
            self._renew_soon()
            return token
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= token.usable_until:
                token = await self._renew(token.value if token is not None else None, need_fresh=False)
        if self._clock() >= token.refresh_at:
            self._renew_soon()
        return token

    def _renew_soon(self) -> None:
        if self._background is not None and not self._background.done():
            return
        if self._clock() < self._retry_at:
            return  # backing off after a failure; the token in hand is still usable
        self._background = asyncio.get_running_loop().create_task(self._renew_in_background())

    async def _renew_in_background(self) -> None:
        try:
            async with self._lock:
                token = self._token
                if token is None or self._clock() < token.refresh_at:
                    return  # renewed meanwhile (or dropped as rejected: the calls fetch themselves)
                await self._renew(token.value, need_fresh=True)
        except GatewayError:
            pass  # logged and counted where it failed; calls keep the still-usable token
        except Exception as exc:
            log.error("gateway: %s: background token renewal failed: %s", self.service, type(exc).__name__)

    def _acceptable(self, token: Token | None, stale: str | None, need_fresh: bool) -> bool:
        if token is None or token.value == stale or token.value == self._rejected:
            return False
        now = self._clock()
        return now < (token.refresh_at if need_fresh else token.usable_until)

    async def _renew(self, stale: str | None, *, need_fresh: bool) -> Token:
        """Called with self._lock held. Adopt a token another instance stored, or fetch one while
        holding the fleet lock. `stale` is never accepted (the due, expired or rejected token);
        `need_fresh` asks for one not yet due for refresh (renewal ahead of expiry)."""
        stored = await self._load()
        if self._acceptable(stored, stale, need_fresh):
            return self._adopt(stored)  # type: ignore[arg-type]
        self._fail_if_backing_off()
        await self._fail_if_fleet_backing_off()
        deadline = time.monotonic() + self._wait_timeout
        while True:
            lock = await self._acquire()
            if lock is not None:
                try:
                    # The previous holder may have stored a token between our read and our lock.
                    stored = await self._load()
                    if self._acceptable(stored, stale, need_fresh):
                        return self._adopt(stored)  # type: ignore[arg-type]
                    return await self._fetch_and_store()
                finally:
                    await self._release(lock)
            # Another instance is fetching: wait for its token rather than invalidating it with ours.
            if time.monotonic() >= deadline:
                self._last_detail = (f"timed out after {self._wait_timeout:.3g}s waiting for another gateway "
                                     "instance to refresh the token")
                raise self._error(self._last_detail)
            await asyncio.sleep(self._poll)
            stored = await self._load()
            if self._acceptable(stored, stale, need_fresh):
                return self._adopt(stored)  # type: ignore[arg-type]
            await self._fail_if_fleet_backing_off()

    async def _fetch_and_store(self) -> Token:
        issued = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                fetched = await self._fetch(self._session())
        except FetchFailed as exc:
            await self._fetch_failed(self._scrub(exc.detail))
        except TimeoutError:
            await self._fetch_failed(f"token endpoint did not answer within {self._timeout:.3g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            await self._fetch_failed(self._scrub(f"token endpoint unreachable: {type(exc).__name__}: {exc}"))
        self._count("success")
        self._failures = 0
        self._retry_at = 0.0
        token = Token.make(fetched.value, issued, fetched.lifetime, self._refresh_before)
        self._adopt(token)
        try:
            await self._store().set(self.key, token.encode(), max(1.0, token.expires_at - self._clock()))
        except StateUnavailable as exc:
            log.warning("gateway: %s: new token not shared with other instances (state store: %s)",
                        self.service, exc)
        log.info("gateway: %s: fetched a new %s (valid %ds)", self.service, self.kind, int(fetched.lifetime))
        return token

    async def _fetch_failed(self, detail: str) -> NoReturn:
        """Count, log and back off after a failed fetch; raises the call's -1002."""
        self._count("error")
        self._failures += 1
        window = min(self._backoff_max, self._backoff_start * 2 ** (self._failures - 1))
        now = self._clock()
        self._retry_at = now + window
        self._last_detail = detail
        log.warning("gateway: %s: %s fetch failed (%s); not retried for %.3gs", self.service, self.kind,
                    detail, window)
        marker = json.dumps({"n": self._failures, "until": now + window, "detail": detail}).encode()
        try:
            await self._store().set(self._fail_key, marker, window)
        except StateUnavailable:
            pass  # the other instances find out for themselves, then back off too
        raise self._error(detail)

    def _fail_if_backing_off(self) -> None:
        wait = self._retry_at - self._clock()
        if wait > 0:
            raise self._error(f"{self._last_detail}; token endpoint not asked again for another {wait:.3g}s")

    async def _fail_if_fleet_backing_off(self) -> None:
        """Another instance's fetch just failed: back off with it instead of failing once more ourselves."""
        try:
            raw = await self._store().get(self._fail_key)
        except StateUnavailable:
            return
        if not raw:
            return
        try:
            marker = json.loads(raw)
            failures, until, detail = int(marker["n"]), float(marker["until"]), str(marker["detail"])
        except (ValueError, KeyError, TypeError):
            return
        if until <= self._clock():
            return
        self._failures = max(self._failures, failures)
        self._retry_at = max(self._retry_at, until)
        self._last_detail = f"{detail} (on another gateway instance)"
        self._fail_if_backing_off()

    def _error(self, detail: str) -> GatewayError:
        return GatewayError(Code.UPSTREAM_AUTH,
                            f"{self.service}: provider refused the gateway's credentials (token fetch failed)",
                            detail=detail)

    def _adopt(self, token: Token) -> Token:
        self._token = token
        if token.value != self._registered:
            self._registered = token.value
            compiled = getattr(self._gw, "compiled", None)
            redactor = getattr(compiled, "redactor", None)
            if redactor is not None:
                redactor.add_secret(token.value)
        return token

    # -- the shared parts: store, lock, session, metrics ----------------------------------------

    @property
    def _fail_key(self) -> str:
        # Per secret: after a wrong secret is corrected, the new rules do not inherit its backoff.
        digest = hashlib.sha256(self._secret.get_secret_value().encode()).hexdigest()[:12]
        return f"{self.key}:failed:{digest}"

    def _store(self) -> StateStore:
        store: StateStore | None = getattr(self._gw, "store", None)
        if store is None:
            if self._private_store is None:
                self._private_store = MemoryStore()
            store = self._private_store
        return store

    async def _load(self) -> Token | None:
        try:
            raw = await self._store().get(self.key)
        except StateUnavailable:
            return None
        return Token.decode(raw, self._refresh_before)

    async def _acquire(self) -> str | None:
        try:
            return await self._store().acquire(self.key, self._lock_ttl)
        except StateUnavailable:
            # No shared store to coordinate through: fetch alone (the FallbackStore normally
            # degrades to a local lock before this happens).
            return ""

    async def _release(self, lock: str) -> None:
        if not lock:
            return
        try:
            await self._store().release(self.key, lock)
        except StateUnavailable:
            pass  # the lock runs out at its TTL

    def _session(self) -> aiohttp.ClientSession:
        if self._gw is None:
            raise FetchFailed("no HTTP client available")
        session: aiohttp.ClientSession = self._gw.http()
        return session

    def _count(self, result: str) -> None:
        metrics = getattr(self._gw, "metrics", None)
        if metrics is not None:
            metrics.token_refreshed(self.service, result)

    def _scrub(self, text: str) -> str:
        """The secret out of a detail (an exception text may quote the URL that carried it)."""
        secret = self._secret.get_secret_value()
        if not secret:
            return text
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
        return text

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        body = await resp.content.read(MAX_TOKEN_BODY + 1)
        if len(body) > MAX_TOKEN_BODY:
            raise FetchFailed(f"token endpoint answer larger than {MAX_TOKEN_BODY} bytes")
        from addons.upstream.forwarder import decode_body

        try:
            return decode_body(resp.headers, body)
        except (ValueError, OSError, EOFError):
            raise FetchFailed(f"token endpoint answer has a bad content-encoding "
                              f"{resp.headers.get('content-encoding')!r}") from None


class WechatToken(TokenCredential):
    """`wechat_token`: GET {token_url}?grant_type=client_credential&appid=..&secret=.., injected as
    the `access_token` query parameter."""

    kind = "WeChat access_token"
    default_lifetime = 7200.0

    def __init__(self, spec: WechatTokenCredentials, context: Any, **kwargs: Any) -> None:
        super().__init__(spec, context, **kwargs)
        self.wechat = spec
        base = str(getattr(context, "upstream_url", "") or "").rstrip("/")
        self.token_url = spec.token_url or f"{base}/cgi-bin/token"

    @property
    def key(self) -> str:
        # Per appid, not per service: WeChat issues one valid token per appid, so two services using
        # the same appid (a second rule, a staging copy on the same Redis) must share it, not fight.
        return f"token:wechat:{self.wechat.app_id}"

    async def _fetch(self, session: aiohttp.ClientSession) -> Fetched:
        url = URL(self.token_url).update_query(
            grant_type="client_credential", appid=self.wechat.app_id, secret=self.wechat.secret.get_secret_value())
        async with session.get(url, headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                               timeout=aiohttp.ClientTimeout(total=self._timeout), allow_redirects=False) as resp:
            body = await self._read(resp)
            status = resp.status
        if status != 200:
            raise FetchFailed(f"token endpoint answered HTTP {status}: {_clip(body[:200].decode('utf-8', 'replace'))}")
        data = _json_object(body)
        errcode = data.get("errcode")
        if errcode not in (None, 0, "0"):
            hint = WECHAT_FETCH_HINTS.get(errcode) if isinstance(errcode, int) else None
            errmsg = _clip(str(data.get("errmsg", "")), 120)
            raise FetchFailed(f"token endpoint answered errcode {errcode} ({errmsg})" + (f": {hint}" if hint else ""))
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise FetchFailed("token endpoint answer has no access_token")
        return Fetched(value, _lifetime(data.get("expires_in"), self.default_lifetime))

    def _inject(self, req: OutboundRequest, value: str) -> None:
        req.set_query("access_token", value)

    def rejected(self, status: int, provider_code: str | None) -> bool:
        return provider_code in WECHAT_TOKEN_INVALID

    def local_answer(self, path: str, http_method: str) -> bytes | None:
        # The app's own token request never reaches WeChat: each would invalidate the gateway's token
        # (and the app does not hold the secret any more anyway).
        if path.rstrip("/") in WECHAT_TOKEN_PATHS:
            return PLACEHOLDER_BODY
        return None


class OAuth2Token(TokenCredential):
    """`oauth2_client_credentials` (RFC 6749 4.4), injected as `Authorization: Bearer`."""

    kind = "OAuth2 access token"
    default_lifetime = 3600.0  # RFC 6749 5.1: expires_in is only RECOMMENDED

    def __init__(self, spec: OAuth2ClientCredentials, context: Any, **kwargs: Any) -> None:
        super().__init__(spec, context, **kwargs)
        self.oauth = spec
        self._warned_type = False

    @property
    def key(self) -> str:
        ident = f"{self.oauth.token_url}\n{self.oauth.client_id}\n{self.oauth.scope or ''}"
        return f"token:oauth2:{hashlib.sha256(ident.encode()).hexdigest()[:16]}"

    def request_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """The form fields and headers of a token request (RFC 6749 4.4.2 and 2.3.1)."""
        form = {"grant_type": "client_credentials"}
        if self.oauth.scope:
            form["scope"] = self.oauth.scope
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        secret = self.oauth.client_secret.get_secret_value()
        if self.oauth.auth_method == "client_secret_basic":
            # 2.3.1: id and secret are form-urlencoded first, then joined by ":" and base64-encoded.
            pair = f"{quote_plus(self.oauth.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self.oauth.client_id
            form["client_secret"] = secret
        return form, headers

    async def _fetch(self, session: aiohttp.ClientSession) -> Fetched:
        form, headers = self.request_parts()
        async with session.post(self.oauth.token_url, data=form, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=self._timeout), allow_redirects=False) as resp:
            body = await self._read(resp)
            status = resp.status
        if not 200 <= status < 300:
            detail = f"token endpoint answered HTTP {status}"
            try:
                data = _json_object(body)
            except FetchFailed:
                text = _clip(body[:200].decode("utf-8", "replace"))
                raise FetchFailed(f"{detail}: {text}" if text else detail) from None
            if "error" in data:  # RFC 6749 5.2
                description = data.get("error_description")
                detail += f": error={_clip(str(data['error']), 80)}"
                if description:
                    detail += f" ({_clip(str(description), 120)})"
            raise FetchFailed(detail)
        data = _json_object(body)
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise FetchFailed("token endpoint answer has no access_token")
        token_type = data.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer" and not self._warned_type:
            self._warned_type = True
            log.warning("gateway: %s: token endpoint issued token_type %r; sending it as a Bearer token",
                        self.service, _clip(token_type, 40))
        return Fetched(value, _lifetime(data.get("expires_in"), self.default_lifetime),
                       token_type if isinstance(token_type, str) else None)

    def _inject(self, req: OutboundRequest, value: str) -> None:
        req.headers.popall("Authorization", None)
        req.headers["Authorization"] = f"Bearer {value}"

    def rejected(self, status: int, provider_code: str | None) -> bool:
        # RFC 6750 3.1: invalid_token comes with 401. A 403 (insufficient_scope) is not fixed by a refresh.
        return status == 401


def make_token_credential(spec: object, context: Any) -> TokenCredential:
    if isinstance(spec, WechatTokenCredentials):
        return WechatToken(spec, context)
    if isinstance(spec, OAuth2ClientCredentials):
        return OAuth2Token(spec, context)
    raise ValueError(f"unknown credentials type {getattr(spec, 'type', spec)!r}")
