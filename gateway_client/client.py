"""`gateway_call` (blocking, standard library only) and `agateway_call` (asyncio, aiohttp)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

EXPLICIT_HOST = "gateway.local"
DEFAULT_TIMEOUT = 30.0  # seconds for the whole call; the gateway's own deadlines are usually shorter
MAX_ANSWER = 64 * 1024 * 1024  # the gateway never answers more than this for a service call
_SOURCES = {"caller", "gateway", "upstream"}


class GatewayError(Exception):
    """A call that did not succeed: `code` and `source` say whose fault it was (SPEC 5)."""

    def __init__(self, code: int, message: str, source: str, request_id: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{code} ({source}): {message}" + (f" [request_id {request_id}]" if request_id else ""))
        self.code = code
        self.message = message
        self.source = source
        self.request_id = request_id
        self.status = status

    @staticmethod
    def of(code: int, message: str, source: str | None, request_id: str | None,
           status: int | None = None) -> GatewayError:
        if source not in _SOURCES:
            source = {1: "upstream", 2: "caller"}.get(abs(code) // 1000, "gateway")
        kind = {"caller": CallerError, "upstream": ProviderError}.get(source, GatewayFault)
        return kind(code, message, source, request_id, status)


class CallerError(GatewayError):
    """-2xxx: the call itself was wrong (identity, signature, allow list, quota, parameters)."""


class GatewayFault(GatewayError):
    """-3xxx: the gateway is misconfigured or failing, or could not be reached at all."""


class ProviderError(GatewayError):
    """-1xxx: the provider failed, timed out, refused the gateway's credentials or was unavailable."""


UNREACHABLE = -3002  # the gateway could not be reached or gave no readable answer


@dataclass(frozen=True)
class _Settings:
    proxy_host: str
    proxy_port: int
    app: str
    secret: str
    timeout: float


def _settings(proxy: str | None, app: str | None, secret: str | None, timeout: float | None) -> _Settings:
    proxy = proxy or os.environ.get("GATEWAY_PROXY", "")
    app = app or os.environ.get("GATEWAY_APP", "")
    secret = secret or os.environ.get("GATEWAY_APP_SECRET", "")
    missing = [name for name, value in (("GATEWAY_PROXY", proxy), ("GATEWAY_APP", app),
                                        ("GATEWAY_APP_SECRET", secret)) if not value]
    if missing:
        raise ValueError(f"gateway_call: set {', '.join(missing)} (or pass proxy=, app=, secret=)")
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("gateway_call: GATEWAY_PROXY must look like http://host:port")
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not 0 < timeout <= 3600:
        raise ValueError("gateway_call: timeout must be between 0 and 3600 seconds")
    return _Settings(parts.hostname, parts.port or 8080, app, secret, timeout)


def _name(kind: str, value: str) -> str:
    if not value or "/" in value or "?" in value or "#" in value:
        raise ValueError(f"gateway_call: {kind} must be a plain name, got {value!r}")
    return quote(value, safe="")


def _request(service: str, method: str, params: dict[str, Any] | None, settings: _Settings,
             request_id: str | None) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) of the signed explicit-form call. Parameters always travel as a JSON body:
    the gateway knows the method's HTTP method and path template and places them (SPEC 16)."""
    if params is not None and not isinstance(params, dict):
        raise TypeError("gateway_call: params must be a dict")
    path = f"/{_name('service', service)}/{_name('method', method)}"
    body = json.dumps(params or {}, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp, nonce = str(int(time.time())), uuid.uuid4().hex
    text = "\n".join(["POST", path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    signature = hmac.new(settings.secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    headers = {
        "Host": EXPLICIT_HOST, "Content-Type": "application/json", "Accept": "application/json",
        "X-Gateway-App": settings.app, "X-Gateway-Timestamp": timestamp, "X-Gateway-Nonce": nonce,
        "X-Gateway-Signature": signature,
        "X-Gateway-Envelope": "unified",  # even for an app configured raw: this client reads envelopes
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    return path, headers, body


def _result(status: int, headers: dict[str, str], body: bytes) -> Any:
    """`data` of a code-0 envelope; raises GatewayError for everything else."""
    request_id = headers.get("x-request-id")
    content_type = headers.get("content-type", "")
    if 200 <= status < 300 and not content_type.startswith("application/json"):
        return body  # a binary success (an image, a file) passes through as the provider sent it
    try:
        envelope = json.loads(body)
        code = int(envelope["code"])
    except (ValueError, KeyError, TypeError):
        raise GatewayFault(UNREACHABLE, f"the gateway gave no envelope (HTTP {status})", "gateway",
                           request_id, status) from None
    if code == 0:
        return envelope.get("data")
    raise GatewayError.of(code, str(envelope.get("message", "")), envelope.get("source"),
                          envelope.get("request_id") or request_id, status)


def gateway_call(service: str, method: str, params: dict[str, Any] | None = None, *, proxy: str | None = None,
                 app: str | None = None, secret: str | None = None, timeout: float | None = None,
                 request_id: str | None = None) -> Any:
    """Call `service.method` with `params`; returns the envelope's `data`, raises GatewayError."""
    settings = _settings(proxy, app, secret, timeout)
    path, headers, body = _request(service, method, params, settings, request_id)
    deadline = time.monotonic() + settings.timeout
    connection = http.client.HTTPConnection(settings.proxy_host, settings.proxy_port, timeout=settings.timeout)
    try:
        connection.request("POST", f"http://{EXPLICIT_HOST}{path}", body=body, headers=headers)
        response = connection.getresponse()
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > MAX_ANSWER:
                raise GatewayFault(UNREACHABLE, "the gateway's answer is too large", "gateway")
            if time.monotonic() > deadline:
                raise TimeoutError
            connection.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunks.append(chunk)
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        return _result(response.status, answer_headers, b"".join(chunks))
    except TimeoutError:
        raise GatewayFault(UNREACHABLE, f"no answer from the gateway within {settings.timeout:g}s", "gateway",
                           request_id) from None
    except (OSError, http.client.HTTPException) as exc:
        raise GatewayFault(UNREACHABLE, f"gateway unreachable: {type(exc).__name__}", "gateway",
                           request_id) from None
    finally:
        connection.close()


async def agateway_call(service: str, method: str, params: dict[str, Any] | None = None, *,
                        proxy: str | None = None, app: str | None = None, secret: str | None = None,
                        timeout: float | None = None, request_id: str | None = None,
                        session: Any = None) -> Any:
    """The asyncio variant of `gateway_call` (aiohttp); pass `session` to reuse one ClientSession."""
    import aiohttp

    settings = _settings(proxy, app, secret, timeout)
    path, headers, body = _request(service, method, params, settings, request_id)
    own = session is None
    if own:
        session = aiohttp.ClientSession(trust_env=False)
    try:
        async with session.post(f"http://{EXPLICIT_HOST}{path}", data=body, headers=headers,
                                proxy=f"http://{settings.proxy_host}:{settings.proxy_port}",
                                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                                allow_redirects=False) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise GatewayFault(UNREACHABLE, "the gateway's answer is too large", "gateway")
                chunks.append(chunk)
            answer_headers = {k.lower(): v for k, v in response.headers.items()}
            return _result(response.status, answer_headers, b"".join(chunks))
    except TimeoutError:
        raise GatewayFault(UNREACHABLE, f"no answer from the gateway within {settings.timeout:g}s", "gateway",
                           request_id) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise GatewayFault(UNREACHABLE, f"gateway unreachable: {type(exc).__name__}", "gateway",
                           request_id) from None
    finally:
        if own:
            await session.close()
