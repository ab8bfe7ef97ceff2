"""Reading a token endpoint's answer: what the WeChat and OAuth2 fetches share (no mitmproxy)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MAX_TOKEN_BODY = 64 * 1024  # a token answer is a few hundred bytes; anything far larger is not one


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


def clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted(body: bytes) -> str:
    """The start of an answer body, for a log line."""
    return clip(body[:200].decode("utf-8", "replace"))


def lifetime(value: Any, default: float) -> float:
    """`expires_in` as seconds: a number or a numeric string (some servers send "3600"); else default."""
    if isinstance(value, bool):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if 0 < seconds < 10 * 365 * 86400 else default


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        raise FetchFailed(f"token endpoint answer is not JSON: {quoted(body)!r}") from None
    if not isinstance(data, dict):
        raise FetchFailed(f"token endpoint answered a JSON {type(data).__name__}, not an object")
    return data


def access_token(data: dict[str, Any]) -> str:
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise FetchFailed("token endpoint answer has no access_token")
    return value


async def read_answer(resp: aiohttp.ClientResponse) -> bytes:
    """The decoded body of a token answer, bounded in size."""
    body = await resp.content.read(MAX_TOKEN_BODY + 1)
    if len(body) > MAX_TOKEN_BODY:
        raise FetchFailed(f"token endpoint answer larger than {MAX_TOKEN_BODY} bytes")
    # Imported here: the forwarder imports the runtime, which imports the credentials.
    from addons.upstream.forwarder import decode_body

    try:
        return decode_body(resp.headers, body)
    except (ValueError, OSError, EOFError):
        raise FetchFailed(f"token endpoint answer has a bad content-encoding "
                          f"{resp.headers.get('content-encoding')!r}") from None
