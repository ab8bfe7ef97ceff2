"""`wechat_token`: WeChat's `access_token`, fetched by the gateway and injected as a query parameter.

The shared caching, fleet lock and backoff are `TokenCredential`'s (`tokens.py`); this module says
how WeChat's token is asked for, what its answers mean and where it goes in a call."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from yarl import URL

from addons.credentials import token_fetch
from addons.credentials.schema import WechatTokenCredentials
from addons.credentials.services import TokenServices
from addons.credentials.tokens import TokenCredential
from addons.outbound import OutboundRequest

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


class WechatToken(TokenCredential):
    """`wechat_token`: GET {token_url}?grant_type=client_credential&appid=..&secret=.., injected as
    the `access_token` query parameter."""

    kind = "WeChat access_token"
    default_lifetime = 7200.0

    def __init__(self, spec: WechatTokenCredentials, services: TokenServices, **options: Any) -> None:
        self.spec = self.wechat = spec
        base = services.upstream_url.rstrip("/")
        self.token_url = spec.token_url or f"{base}/cgi-bin/token"
        super().__init__(spec.secret, float(spec.timeout), float(spec.refresh_before), services, **options)

    @property
    def key(self) -> str:
        # Per appid, not per service: WeChat issues one valid token per appid, so two services using
        # the same appid (a second rule, a staging copy on the same Redis) must share it, not fight.
        return f"token:wechat:{self.wechat.app_id}"

    async def _fetch(self, session: aiohttp.ClientSession) -> token_fetch.Fetched:
        url = URL(self.token_url).update_query(
            grant_type="client_credential", appid=self.wechat.app_id, secret=self.wechat.secret.get_secret_value())
        async with session.get(url, headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                               timeout=aiohttp.ClientTimeout(total=self._timeout), allow_redirects=False) as resp:
            body = await token_fetch.read_answer(resp)
            status = resp.status
        if status != 200:
            raise token_fetch.FetchFailed(f"token endpoint answered HTTP {status}: {token_fetch.quoted(body)}")
        data = token_fetch.json_object(body)
        errcode = data.get("errcode")
        if errcode not in (None, 0, "0"):
            hint = WECHAT_FETCH_HINTS.get(errcode) if isinstance(errcode, int) else None
            errmsg = token_fetch.clip(str(data.get("errmsg", "")), 120)
            raise token_fetch.FetchFailed(f"token endpoint answered errcode {errcode} ({errmsg})"
                                          + (f": {hint}" if hint else ""))
        lifetime = token_fetch.lifetime(data.get("expires_in"), self.default_lifetime)
        return token_fetch.Fetched(token_fetch.access_token(data), lifetime)

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
