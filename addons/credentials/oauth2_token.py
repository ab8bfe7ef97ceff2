"""`oauth2_client_credentials` (RFC 6749 4.4): a bearer token fetched by the gateway.

The shared caching, fleet lock and backoff are `TokenCredential`'s (`tokens.py`); this module says
how the token is asked for, what the answers mean and where it goes in a call."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from addons.credentials import token_fetch
from addons.credentials.schema import OAuth2ClientCredentials
from addons.credentials.services import TokenServices
from addons.credentials.tokens import TokenCredential
from addons.outbound import OutboundRequest

log = logging.getLogger("gateway")


class OAuth2Token(TokenCredential):
    """`oauth2_client_credentials` (RFC 6749 4.4), injected as `Authorization: Bearer`."""

    kind = "OAuth2 access token"
    default_lifetime = 3600.0  # RFC 6749 5.1: expires_in is only RECOMMENDED

    def __init__(self, spec: OAuth2ClientCredentials, services: TokenServices, **options: Any) -> None:
        self.spec = self.oauth = spec
        self._warned_type = False
        super().__init__(spec.client_secret, float(spec.timeout), float(spec.refresh_before), services, **options)

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

    async def _fetch(self, session: aiohttp.ClientSession) -> token_fetch.Fetched:
        form, headers = self.request_parts()
        async with session.post(self.oauth.token_url, data=form, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=self._timeout), allow_redirects=False) as resp:
            body = await token_fetch.read_answer(resp)
            status = resp.status
        if not 200 <= status < 300:
            raise token_fetch.FetchFailed(_refusal(status, body))
        data = token_fetch.json_object(body)
        value = token_fetch.access_token(data)
        token_type = data.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer" and not self._warned_type:
            self._warned_type = True
            log.warning("gateway: %s: token endpoint issued token_type %r; sending it as a Bearer token",
                        self.service, token_fetch.clip(token_type, 40))
        return token_fetch.Fetched(value, token_fetch.lifetime(data.get("expires_in"), self.default_lifetime),
                       token_type if isinstance(token_type, str) else None)

    def _inject(self, req: OutboundRequest, value: str) -> None:
        req.headers.popall("Authorization", None)
        req.headers["Authorization"] = f"Bearer {value}"

    def rejected(self, status: int, provider_code: str | None) -> bool:
        # RFC 6750 3.1: invalid_token comes with 401. A 403 (insufficient_scope) is not fixed by a refresh.
        return status == 401


def _refusal(status: int, body: bytes) -> str:
    """The log detail of a non-2xx token answer, with the RFC 6749 5.2 error when there is one."""
    detail = f"token endpoint answered HTTP {status}"
    try:
        data = token_fetch.json_object(body)
    except token_fetch.FetchFailed:
        text = token_fetch.quoted(body)
        return f"{detail}: {text}" if text else detail
    if "error" in data:  # RFC 6749 5.2
        description = data.get("error_description")
        detail += f": error={token_fetch.clip(str(data['error']), 80)}"
        if description:
            detail += f" ({token_fetch.clip(str(description), 120)})"
    return detail
