"""What a token credential needs from the running gateway, and nothing more.

The credential is built by the rules glue (`addons/chain/rules.py`, `CredentialContext`) and gets
these five things from it; it never reaches into the gateway otherwise, so it can be tested with
any object that has them."""

from __future__ import annotations

from typing import Protocol

import aiohttp

from addons.state.base import StateStore


class TokenServices(Protocol):
    service: str  # the rule's service name: log lines, metrics labels, error messages
    upstream_url: str  # the service's upstream.url (WeChat's default token endpoint is below it)

    def store(self) -> StateStore | None:
        """The gateway's state store (tokens and the fleet lock are shared through it); None when
        the gateway has none yet, and the credential then keeps its own in-memory one."""

    def http(self) -> aiohttp.ClientSession:
        """The gateway's shared HTTP client, for the token endpoint."""

    def add_secret(self, value: str) -> None:
        """Mask a fetched token in everything the gateway writes from now on."""

    def token_refreshed(self, result: str) -> None:
        """Count one token fetch: result "success" or "error"."""
