"""The upstream leg: the gateway sends the call itself, through one shared aiohttp session, so each
attempt has a connect and read timeout, failures can be retried or failed over, and every outcome
(including a refused connect or a hang) becomes an envelope instead of mitmproxy's HTML 502."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from addons.envelope import ProviderAnswer, Verdict
from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest
from addons.upstream.retry import Outcome

if TYPE_CHECKING:
    from addons.metrics import Metrics
    from addons.runtime import ServiceRuntime, Target

log = logging.getLogger("gateway")

# Headers that describe one hop, not the message: never forwarded either way (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
MAX_BODY = 64 * 1024 * 1024  # an upstream answer larger than this is refused, not buffered


@dataclass
class Result:
    """What the last attempt gave: a provider answer (status/headers/body) or a gateway error."""

    code: int
    message: str
    verdict: Verdict | None = None
    status: int | None = None
    headers: CIMultiDictProxy[str] | CIMultiDict[str] = field(default_factory=CIMultiDict)
    raw_body: bytes = b""  # as received (still content-encoded)
    data: Any = None
    attempts: int = 0
    target: str | None = None
    upstream_ms: float | None = None
    error: str = ""
    retry_after: str | None = None


def make_session() -> aiohttp.ClientSession:
    # trust_env=False: the gateway's own HTTP(S)_PROXY must not loop its calls back into itself.
    # auto_decompress=False: raw bodies pass through untouched; the envelope path decodes itself.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=60, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))


def decode_body(headers: CIMultiDictProxy[str] | CIMultiDict[str], body: bytes) -> bytes:
    encoding = headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    from mitmproxy.net import encoding as mitm_encoding

    return mitm_encoding.decode(body, encoding)  # raises ValueError on a corrupt body


def _retarget(base: OutboundRequest, target: Target) -> OutboundRequest:
    req = base.copy()
    req.scheme, req.host, req.port = target.scheme, target.host, target.port
    req.path = target.base_path + base.path
    req.headers["Host"] = req.authority
    return req


async def _send(session: aiohttp.ClientSession, req: OutboundRequest, timeout: float
                ) -> tuple[int, CIMultiDictProxy[str], bytes] | Outcome:
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)
    try:
        async with session.request(
            req.method, URL(req.url, encoded=True), headers=req.headers, data=req.body or None,
            timeout=client_timeout, allow_redirects=False, skip_auto_headers=("Accept", "Accept-Encoding",
                                                                              "Content-Type", "User-Agent"),
        ) as resp:
            length = resp.content_length
            if length is not None and length > MAX_BODY:
                return Outcome.answer(502, Code.UPSTREAM_UNREADABLE, detail=f"answer of {length} bytes is too large")
            body = await resp.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                return Outcome.answer(502, Code.UPSTREAM_UNREADABLE, detail="answer too large")
            return resp.status, resp.headers, body
    except aiohttp.ConnectionTimeoutError:
        return Outcome.timed_out(sent=False, detail=f"connect timed out after {timeout:.3g}s")
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return Outcome.timed_out(sent=True, detail=f"no complete answer within {timeout:.3g}s")
    except aiohttp.ClientConnectorError as exc:
        return Outcome.connect_failed(detail=f"connect failed: {exc.os_error.strerror or exc.os_error}")
    except aiohttp.ServerDisconnectedError:
        return Outcome(kind="connect", sent=True, detail="connection closed before a complete answer")
    except aiohttp.ClientPayloadError as exc:
        return Outcome(kind="connect", sent=True, detail=f"answer cut short: {exc}")
    except aiohttp.ClientResponseError as exc:
        return Outcome.answer(502, Code.UPSTREAM_UNREADABLE, detail=f"not an HTTP answer: {exc.message}")
    except aiohttp.ClientOSError as exc:
        return Outcome(kind="connect", sent=True, detail=f"connection error: {exc.strerror or exc}")


def _failure(outcome: Outcome, rule: str, attempts: int) -> tuple[int, str]:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if outcome.kind == "timeout":
        if not outcome.sent:
            return Code.UPSTREAM_UNAVAILABLE, f"{rule}: upstream connect timed out{tries}"
        return Code.UPSTREAM_TIMEOUT, f"{rule}: upstream timed out{tries}"
    if outcome.kind == "connect":
        if outcome.sent:
            return Code.UPSTREAM_UNAVAILABLE, f"{rule}: upstream closed the connection without an answer{tries}"
        return Code.UPSTREAM_UNAVAILABLE, f"{rule}: upstream unreachable{tries}"
    return outcome.code or Code.UPSTREAM_UNREADABLE, f"{rule}: upstream answer unreadable{tries}"


async def forward(runtime: ServiceRuntime, base: OutboundRequest, rule: str, method: str,
                  session: aiohttp.ClientSession, metrics: Metrics | None = None) -> Result:
    """Send `base` (its path below the service's base path) with the service's policy."""
    policy = runtime.policy(method)
    deadline = policy.start()
    health = runtime.health
    target_health = health.pick()
    if target_health is None:
        fallback = runtime.spec.fallback
        code = fallback.code if fallback else Code.UPSTREAM_UNAVAILABLE
        message = (fallback.message if fallback and fallback.message
                   else f"{rule}: upstream unavailable (no healthy target)")
        return Result(code, message, data=fallback.data if fallback else None, error="no healthy target")
    attempt = 0
    refreshed = False
    result = Result(Code.GATEWAY_INTERNAL, f"{rule}: no attempt made")
    while True:
        attempt += 1
        target = runtime.targets[target_health.name]
        req = _retarget(base, target)
        await runtime.credential.apply(req)
        if runtime.signer is not None:
            runtime.signer.sign(req, time.time())
        started = time.perf_counter()
        sent = await _send(session, req, policy.attempt_timeout(deadline.remaining()))
        elapsed = time.perf_counter() - started
        if metrics is not None:
            metrics.observe_upstream(runtime.name, target.name, elapsed)
        result = Result(Code.GATEWAY_INTERNAL, "", attempts=attempt, target=target.name,
                        upstream_ms=(result.upstream_ms or 0.0) + elapsed * 1000)
        if isinstance(sent, Outcome):
            outcome = sent
            result.code, result.message = _failure(outcome, rule, attempt)
            result.error = outcome.detail
            result.status = outcome.status
        else:
            status, headers, body = sent
            result.status, result.headers, result.raw_body = status, headers, body
            result.retry_after = headers.get("retry-after")
            verdict = _classify(runtime, rule, status, headers, body)
            result.verdict = verdict
            result.code, result.message, result.data = verdict.code, verdict.message, verdict.data
            result.error = verdict.detail
            if verdict.code != 0 and not refreshed and runtime.credential.rejected(status, verdict.provider_code):
                # The provider refused our token: fetch a new one and repeat this attempt once.
                refreshed = True
                await runtime.credential.refresh()
                attempt -= 1
                continue
            outcome = (Outcome.answer(status, verdict.code or None, result.retry_after, detail=verdict.detail)
                       if verdict.code else Outcome.answer(status))
        if policy.is_failure(outcome):
            target_health.record_failure(outcome.detail)
        else:
            target_health.record_success()
        decision = policy.decide(outcome, attempt, method, deadline)
        if not decision.retry:
            if decision.reason == "deadline" and outcome.kind != "ok":
                result.error = f"{result.error}; next wait {decision.wait:.2f}s would pass the deadline"
            return result
        if metrics is not None:
            metrics.retried(runtime.name)
        await asyncio.sleep(decision.wait)
        # Fail over inside the call when the target just went down (or the other one is preferred).
        target_health = health.pick() or health.other(target_health) or target_health


def _classify(runtime: ServiceRuntime, rule: str, status: int, headers: CIMultiDictProxy[str],
              body: bytes) -> Verdict:
    try:
        decoded = decode_body(headers, body)
    except (ValueError, OSError, EOFError):
        return Verdict(Code.UPSTREAM_UNREADABLE, f"{rule}: upstream answer unreadable", None,
                       detail=f"bad content-encoding {headers.get('content-encoding')!r}")
    verdict = runtime.adapter.classify(ProviderAnswer(status, headers, decoded), rule)
    if runtime.signer is not None and 200 <= status < 300:
        try:
            runtime.signer.verify_response(status, headers, decoded)
        except GatewayError as exc:
            return Verdict(exc.code, exc.message, None, detail=exc.detail or "response signature check failed")
    return verdict
