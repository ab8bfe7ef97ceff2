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
secret before they leave this module.

This module is the machinery both share: `Token` (a token and its times), `Backoff`, `TokenStore`
(the store, the fleet lock and the failure marker) and `TokenCredential`. The provider specifics are
in `wechat_token.py` and `oauth2_token.py`; what the credential gets from the running gateway is the
`TokenServices` it is built with (`services.py`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import quote, quote_plus

import aiohttp
from pydantic import SecretStr

from addons.credentials.services import TokenServices
from addons.credentials.token_fetch import Fetched, FetchFailed
from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest
from addons.state.base import StateStore, StateUnavailable
from addons.state.memory import MemoryStore

log = logging.getLogger("gateway")

BACKOFF_START = 1.0  # seconds of fail-fast after the first failed fetch, doubling per failure
BACKOFF_MAX = 60.0
POLL_INTERVAL = 0.05  # how often an instance waiting for another's refresh reads the store


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


@dataclass
class Backoff:
    """Fail-fast after failed fetches: `start` seconds doubling to `limit`, per consecutive failure."""

    start: float = BACKOFF_START
    limit: float = BACKOFF_MAX
    failures: int = 0  # consecutive failed fetches (here or, through the store, elsewhere)
    retry_at: float = 0.0  # clock value before which no fetch is tried
    detail: str = ""  # why the last fetch failed, for the calls failed meanwhile

    def failed(self, now: float, detail: str) -> float:
        """Record a failure; the window it opens, in seconds."""
        self.failures += 1
        window = min(self.limit, self.start * 2.0 ** (self.failures - 1))
        self.retry_at = now + window
        self.detail = detail
        return window

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def join(self, failures: int, until: float, detail: str) -> None:
        """Back off with another instance's failure."""
        self.failures = max(self.failures, failures)
        self.retry_at = max(self.retry_at, until)
        self.detail = detail

    def waiting(self, now: float) -> float:
        """Seconds left of the window; 0 or less when a fetch may be tried."""
        return self.retry_at - now


class TokenStore:
    """A token's entries in the state store: the token, the fleet lock and the failure marker.

    Every operation tolerates an unreachable store (`StateUnavailable`): a token not shared is still
    a token, and a lock that cannot be taken means fetching alone."""

    def __init__(self, services: TokenServices, key: str, secret: SecretStr, lock_ttl: float,
                 refresh_before: float) -> None:
        self._services = services
        self.key = key
        # Per secret: after a wrong secret is corrected, the new rules do not inherit its backoff.
        digest = hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:12]
        self.fail_key = f"{key}:failed:{digest}"
        self._lock_ttl = lock_ttl
        self._refresh_before = refresh_before
        self._private: MemoryStore | None = None

    def _store(self) -> StateStore:
        store = self._services.store()
        if store is None:
            if self._private is None:
                self._private = MemoryStore()
            store = self._private
        return store

    async def load(self) -> Token | None:
        try:
            raw = await self._store().get(self.key)
        except StateUnavailable:
            return None
        return Token.decode(raw, self._refresh_before)

    async def save(self, token: Token, ttl: float) -> None:
        try:
            await self._store().set(self.key, token.encode(), ttl)
        except StateUnavailable as exc:
            log.warning("gateway: %s: new token not shared with other instances (state store: %s)",
                        self._services.service, exc)

    async def acquire(self) -> str | None:
        """The fleet lock's token; None while another instance holds it; "" without a store."""
        try:
            return await self._store().acquire(self.key, self._lock_ttl)
        except StateUnavailable:
            # No shared store to coordinate through: fetch alone (the FallbackStore normally
            # degrades to a local lock before this happens).
            return ""

    async def release(self, lock: str) -> None:
        if not lock:
            return
        try:
            await self._store().release(self.key, lock)
        except StateUnavailable:
            pass  # the lock runs out at its TTL

    async def mark_failed(self, backoff: Backoff, window: float) -> None:
        marker = {"n": backoff.failures, "until": backoff.retry_at, "detail": backoff.detail}
        try:
            await self._store().set(self.fail_key, json.dumps(marker).encode(), window)
        except StateUnavailable:
            pass  # the other instances find out for themselves, then back off too

    async def fleet_failure(self) -> tuple[int, float, str] | None:
        """Another instance's recorded failure: (failures, until, detail), or None."""
        try:
            raw = await self._store().get(self.fail_key)
        except StateUnavailable:
            return None
        if not raw:
            return None
        try:
            marker = json.loads(raw)
            return int(marker["n"]), float(marker["until"]), str(marker["detail"])
        except (ValueError, KeyError, TypeError):
            return None

    async def close(self) -> None:
        if self._private is not None:
            await self._private.close()


class TokenCredential:
    """What WeChat and OAuth2 share: caching, the fleet lock, backoff, metrics, redaction.

    Subclasses say how to fetch (`_fetch`), how to inject (`_inject`), which answers mean the token
    was rejected (`rejected`), under which store key the token lives (`key`) and which secret must
    never leave (`secret`)."""

    kind = "token"
    default_lifetime = 3600.0

    def __init__(self, secret: SecretStr, timeout: float, refresh_before: float, services: TokenServices, *,
                 clock: Callable[[], float] = time.time, poll_interval: float = POLL_INTERVAL,
                 backoff_start: float = BACKOFF_START, backoff_max: float = BACKOFF_MAX) -> None:
        self.services = services
        self.service = services.service
        self._secret = secret
        self._clock = clock  # wall clock: token times are shared with other instances through the store
        self._poll = poll_interval
        self._timeout = timeout
        self._refresh_before = refresh_before
        # A holder that crashed mid-fetch blocks the fleet for at most this long.
        lock_ttl = self._timeout + 5.0
        # Waiting for another instance's refresh: its fetch, plus the time to take over a dead holder's lock.
        self._wait_timeout = lock_ttl + 1.0
        self._backoff = Backoff(backoff_start, backoff_max)
        self._shared = TokenStore(services, self.key, secret, lock_ttl, refresh_before)
        self._token: Token | None = None
        self._rejected: str | None = None  # the last value a provider called invalid: never adopted again
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._registered: str | None = None  # last value handed to the redactor
        # The token each call injected, so refresh() knows which token the provider rejected even when
        # other calls have refreshed in between. A call's apply() and refresh() run in its one task
        # (the forwarder awaits both); weak, so a finished call's entry goes with its task.
        self._applied: weakref.WeakKeyDictionary[asyncio.Task[object], str] = weakref.WeakKeyDictionary()

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
        task = asyncio.current_task()
        if task is not None:
            self._applied[task] = token.value

    async def refresh(self) -> None:
        task = asyncio.current_task()
        stale = self._applied.pop(task, None) if task is not None else None
        if stale is None and self._token is not None:
            stale = self._token.value
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
        await self._shared.close()

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
        if self._backoff.waiting(self._clock()) > 0:
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

    async def _stored(self, stale: str | None, need_fresh: bool) -> Token | None:
        """The token in the store, when it is one this call may use: not `stale`, not rejected, and
        not expired (with `need_fresh`: not yet due for refresh either)."""
        token = await self._shared.load()
        if token is None or token.value == stale or token.value == self._rejected:
            return None
        if self._clock() >= (token.refresh_at if need_fresh else token.usable_until):
            return None
        return self._adopt(token)

    async def _renew(self, stale: str | None, *, need_fresh: bool) -> Token:
        """Called with self._lock held. Adopt a token another instance stored, or fetch one while
        holding the fleet lock. `stale` is never accepted (the due, expired or rejected token);
        `need_fresh` asks for one not yet due for refresh (renewal ahead of expiry)."""
        stored = await self._stored(stale, need_fresh)
        if stored is not None:
            return stored
        self._fail_if_backing_off()
        await self._fail_if_fleet_backing_off()
        deadline = time.monotonic() + self._wait_timeout
        while True:
            lock = await self._shared.acquire()
            if lock is not None:
                try:
                    # The previous holder may have stored a token between our read and our lock.
                    return await self._stored(stale, need_fresh) or await self._fetch_and_store()
                finally:
                    await self._shared.release(lock)
            # Another instance is fetching: wait for its token rather than invalidating it with ours.
            if time.monotonic() >= deadline:
                self._backoff.detail = (f"timed out after {self._wait_timeout:.3g}s waiting for another "
                                        "gateway instance to refresh the token")
                raise self._error(self._backoff.detail)
            await asyncio.sleep(self._poll)
            stored = await self._stored(stale, need_fresh)
            if stored is not None:
                return stored
            await self._fail_if_fleet_backing_off()

    async def _fetch_and_store(self) -> Token:
        issued = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                fetched = await self._fetch(self.services.http())
        except FetchFailed as exc:
            await self._fetch_failed(self._scrub(exc.detail))
        except TimeoutError:
            await self._fetch_failed(f"token endpoint did not answer within {self._timeout:.3g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            await self._fetch_failed(self._scrub(f"token endpoint unreachable: {type(exc).__name__}: {exc}"))
        self.services.token_refreshed("success")
        self._backoff.succeeded()
        token = Token.make(fetched.value, issued, fetched.lifetime, self._refresh_before)
        self._adopt(token)
        await self._shared.save(token, max(1.0, token.expires_at - self._clock()))
        log.info("gateway: %s: fetched a new %s (valid %ds)", self.service, self.kind, int(fetched.lifetime))
        return token

    async def _fetch_failed(self, detail: str) -> NoReturn:
        """Count, log and back off after a failed fetch; raises the call's -1002."""
        self.services.token_refreshed("error")
        window = self._backoff.failed(self._clock(), detail)
        log.warning("gateway: %s: %s fetch failed (%s); not retried for %.3gs", self.service, self.kind,
                    detail, window)
        await self._shared.mark_failed(self._backoff, window)
        raise self._error(detail)

    def _fail_if_backing_off(self) -> None:
        wait = self._backoff.waiting(self._clock())
        if wait > 0:
            raise self._error(f"{self._backoff.detail}; token endpoint not asked again for another {wait:.3g}s")

    async def _fail_if_fleet_backing_off(self) -> None:
        """Another instance's fetch just failed: back off with it instead of failing once more ourselves."""
        failure = await self._shared.fleet_failure()
        if failure is None:
            return
        failures, until, detail = failure
        if until <= self._clock():
            return
        self._backoff.join(failures, until, f"{detail} (on another gateway instance)")
        self._fail_if_backing_off()

    def _error(self, detail: str) -> GatewayError:
        return GatewayError(Code.UPSTREAM_AUTH,
                            f"{self.service}: provider refused the gateway's credentials (token fetch failed)",
                            detail=detail)

    def _adopt(self, token: Token) -> Token:
        self._token = token
        if token.value != self._registered:
            self._registered = token.value
            self.services.add_secret(token.value)
        return token

    def _scrub(self, text: str) -> str:
        """The secret out of a detail (an exception text may quote the URL that carried it)."""
        secret = self._secret.get_secret_value()
        if not secret:
            return text
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
        return text
