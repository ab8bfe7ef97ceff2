"""The upstream leg: the gateway sends the call itself, through one shared aiohttp session, so each
attempt has a connect and read timeout, failures can be retried or failed over, and every outcome
(including a refused connect or a hang) becomes an envelope instead of mitmproxy's HTML 502."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from addons.envelope import ProviderAnswer, Verdict
from addons.errors import Code, GatewayError
from addons.limits import MAX_BODY, MIB
from addons.outbound import OutboundRequest
from addons.upstream import decompress
from addons.upstream.retry import Deadline, Outcome, RetryPolicy

if TYPE_CHECKING:
    from addons.metrics import Metrics
    from addons.runtime import ServiceRuntime, Target
    from addons.upstream.health import ServiceHealth, TargetHealth

log = logging.getLogger("gateway")

# Headers that describe one hop, not the message: never forwarded either way (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
MEDIA_TYPES = ("image/", "audio/", "video/", "application/pdf", "application/zip")
# `data` of a successful binary answer: the caller gets the provider's bytes as they came.
BINARY_BODY = object()
CLASSIFY_INLINE_BYTES = 256 * 1024  # larger answers are decoded and classified in a worker thread
# Methods a client may repeat by itself after a connection failure (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Hard bounds behind aiohttp's own timers, which expire first and say what timed out (connect or
# answer). An attempt is cut off shortly after its timeout even where aiohttp cannot bound what it
# awaits; the whole call shortly after its deadline, whatever it awaits (a credential fetch, a signer).
ATTEMPT_GRACE = 0.05
DEADLINE_GRACE = 0.1  # later than an attempt's, so an attempt that ends at the deadline keeps its code
# Below this, what is left of the deadline cannot hold an attempt: the call ends with what it has.
MIN_ATTEMPT = 0.005
# Pooled connections idle longer than this are closed by the gateway first. Many servers drop idle
# keep-alive connections after 5 s (Apache, Node); reusing one the provider is closing at that moment
# fails a request that was never read, which for a POST cannot safely be repeated.
KEEPALIVE = 4.0


class AttemptObserver(Protocol):
    def end(self, status: int | None, code: int | None, error: str = "") -> None: ...


OnAttempt = Callable[[OutboundRequest, str, int], AttemptObserver]


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


class AttemptTrace:
    """What aiohttp reported about one request (through the session's TraceConfig): whether it got a
    connection, whether that connection came from the pool, and whether the request went out. This
    decides if a failure happened before the provider could have seen the request, which a timer alone
    cannot tell (the attempt's overall timer and the connect timer expire at the same moment)."""

    __slots__ = ("connected", "reused", "sent")

    def __init__(self) -> None:
        self.connected = False
        self.reused = False
        self.sent = False


def _trace_of(ctx: SimpleNamespace) -> AttemptTrace | None:
    trace = getattr(ctx, "trace_request_ctx", None)
    return trace if isinstance(trace, AttemptTrace) else None  # probes send no trace object


async def _on_connection_created(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any) -> None:
    if (trace := _trace_of(ctx)) is not None:
        trace.connected = True


async def _on_connection_reused(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any) -> None:
    if (trace := _trace_of(ctx)) is not None:
        trace.connected = trace.reused = True


async def _on_headers_sent(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any) -> None:
    if (trace := _trace_of(ctx)) is not None:
        trace.sent = True


def make_session() -> aiohttp.ClientSession:
    # trust_env=False: the gateway's own HTTP(S)_PROXY must not loop its calls back into itself.
    # auto_decompress=False: raw bodies pass through untouched; the envelope path decodes itself.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=60, enable_cleanup_closed=True,
                                     keepalive_timeout=KEEPALIVE)
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(_on_connection_created)
    tracing.on_connection_reuseconn.append(_on_connection_reused)
    tracing.on_request_headers_sent.append(_on_headers_sent)
    session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                    cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
                                    trace_configs=[tracing])
    # aiohttp silently sends an idempotent request a second time when its connection fails, pooled or
    # not: the provider would see two requests for one attempt, uncounted, outside the retry policy.
    # The forwarder does that one repeat itself, only where it is safe (see `_send`).
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


def decode_body(headers: CIMultiDictProxy[str] | CIMultiDict[str], body: bytes) -> bytes:
    # Bounded: a small compressed answer may inflate to gigabytes (raises ValueError past MAX_BODY).
    return decompress.decode(body, headers.get("content-encoding", ""), MAX_BODY)


def _retarget(base: OutboundRequest, target: Target) -> OutboundRequest:
    req = base.copy()
    req.scheme, req.host, req.port = target.scheme, target.host, target.port
    req.path = target.base_path + base.path
    req.headers["Host"] = req.authority
    return req


class _TooLarge(Exception):
    pass


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, at most MAX_BODY bytes. (`content.read(n)` returns whatever has arrived so far,
    not n bytes: a body spread over several TCP segments would come back cut short.)"""
    length = resp.content_length
    if length is not None and length > MAX_BODY:
        raise _TooLarge(f"answer of {length} bytes is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class _Stale:
    """A request lost on a pooled connection before any answer: see `_send`."""

    outcome: Outcome


async def _send(session: aiohttp.ClientSession, req: OutboundRequest, timeout: float,
                tls: ssl.SSLContext | bool | None = None
                ) -> tuple[int, CIMultiDictProxy[str], bytes] | Outcome:
    """One attempt. A request that failed on a pooled connection before any answer (the provider
    closed it while idle, as the request went out) is sent once more on the spot when its method is
    idempotent, as RFC 9112 9.3.1 allows: that is no retry and no failure of the target. A POST
    cannot be repeated so: the provider may have read it before closing."""
    started = time.monotonic()
    outcome = await _send_once(session, req, timeout, tls)
    if isinstance(outcome, _Stale):
        left = timeout - (time.monotonic() - started)
        if req.method.upper() in IDEMPOTENT and left >= MIN_ATTEMPT:
            outcome = await _send_once(session, req, left, tls)
        if isinstance(outcome, _Stale):
            return outcome.outcome
    return outcome


async def _send_once(session: aiohttp.ClientSession, req: OutboundRequest, timeout: float,
                     tls: ssl.SSLContext | bool | None = None
                     ) -> tuple[int, CIMultiDictProxy[str], bytes] | Outcome | _Stale:
    # ceil_threshold=inf: aiohttp otherwise rounds timeouts above 5 s up to a whole second of the
    # loop clock, which could carry a call up to a second past its deadline.
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout, ceil_threshold=math.inf)
    trace = AttemptTrace()
    answered = False
    try:
        # The hard bound: aiohttp treats a timeout of 0 as none at all, and cannot bound all it awaits.
        async with asyncio.timeout(timeout + ATTEMPT_GRACE), session.request(
            req.method, URL(req.url, encoded=True), headers=req.headers, data=req.body or None,
            timeout=client_timeout, allow_redirects=False, trace_request_ctx=trace, ssl=True if tls is None else tls,
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
        ) as resp:
            answered = True
            body = await _read_body(resp)
            return resp.status, resp.headers, body
    except _TooLarge as exc:
        return Outcome.answer(502, Code.UPSTREAM_UNREADABLE, detail=str(exc))
    except aiohttp.ConnectionTimeoutError:
        return Outcome.timed_out(sent=False, detail=f"connect timed out after {timeout:.3g}s")
    except TimeoutError:  # aiohttp's ServerTimeoutError is one too
        if not trace.connected:
            return Outcome.timed_out(sent=False, detail=f"connect timed out after {timeout:.3g}s")
        return Outcome.timed_out(sent=trace.sent, detail=f"no complete answer within {timeout:.3g}s")
    except aiohttp.ClientConnectorError as exc:
        return Outcome.connect_failed(detail=f"connect failed: {exc.os_error.strerror or exc.os_error}")
    except aiohttp.ClientResponseError as exc:
        return Outcome.answer(502, Code.UPSTREAM_UNREADABLE, detail=f"not an HTTP answer: {exc.message}")
    except aiohttp.ClientPayloadError as exc:
        return Outcome(kind="connect", sent=True, detail=f"answer cut short: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        # Disconnects, resets, broken pipes: the connection failed before or during the answer.
        if not trace.connected:
            return Outcome.connect_failed(detail=f"connect failed: {type(exc).__name__}: {exc}")
        outcome = Outcome(kind="connect", sent=trace.sent or answered,
                          detail=f"connection closed before a complete answer ({type(exc).__name__})")
        if trace.reused and not answered:
            return _Stale(outcome)
        return outcome


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


def _fallback(runtime: ServiceRuntime, rule: str) -> Result:
    """No target may take the call: the configured answer at once, the provider is not contacted."""
    fallback = runtime.spec.fallback
    code = fallback.code if fallback else Code.UPSTREAM_UNAVAILABLE
    message = (fallback.message if fallback and fallback.message
               else f"{rule}: upstream unavailable (no healthy target)")
    return Result(code, message, data=fallback.data if fallback else None, error="no healthy target")


def _health_failure(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Whether the attempt counts against its target. `retry.on` decides for answers (a 503, a body
    code like WeChat's -1); a target that could not be reached or did not answer in time failed
    whatever `on` lists: a rule with `on: [-1003]` must still see a dead primary go down, not have its
    refused connects reset the failure count as if they were successes."""
    return outcome.kind in ("connect", "timeout") or policy.is_failure(outcome)


def _next_target(health: ServiceHealth, failed: TargetHealth) -> TargetHealth:
    """Where the retry after a failed attempt goes: the other target when it may take calls (the one
    that just failed is the likeliest to fail again), else wherever a new call would go, else the same
    one: the call was admitted, and its retries stay within its own attempts and deadline."""
    return health.other(failed) or health.pick() or failed


class _Progress:
    """How far a call got, readable when the deadline cuts it off from outside."""

    __slots__ = ("result",)

    def __init__(self, rule: str) -> None:
        self.result = Result(Code.UPSTREAM_TIMEOUT, f"{rule}: upstream timed out")


@dataclass
class _Call:
    """What every attempt of one call shares: the request, its policy and deadline, and where it is."""

    runtime: ServiceRuntime
    base: OutboundRequest
    rule: str
    method: str
    session: aiohttp.ClientSession
    metrics: Metrics | None
    policy: RetryPolicy
    deadline: Deadline
    on_attempt: OnAttempt | None
    progress: _Progress
    refreshed: bool = False  # the credential was renewed once after the provider refused it


async def forward(runtime: ServiceRuntime, base: OutboundRequest, rule: str, method: str,
                  session: aiohttp.ClientSession, metrics: Metrics | None = None,
                  on_attempt: OnAttempt | None = None) -> Result:
    """Send `base` (its path below the service's base path) with the service's policy.
    `on_attempt(request, target, n)` is told of each attempt before its credentials are applied
    (tracing: a span, a traceparent header); what it returns is ended with the attempt's outcome."""
    policy = runtime.policy(method)
    deadline = policy.start()
    target_health = runtime.health.pick()
    if target_health is None:
        return _fallback(runtime, rule)
    call = _Call(runtime, base, rule, method, session, metrics, policy, deadline, on_attempt, _Progress(rule))
    bound = asyncio.timeout(deadline.remaining() + DEADLINE_GRACE)
    try:
        async with bound:
            return await _attempts(call, target_health)
    except TimeoutError:
        if not bound.expired():
            raise
        # Something other than an attempt (a credential fetch, say) outlived the deadline.
        result = call.progress.result
        tries = f" after {result.attempts} attempts" if result.attempts > 1 else ""
        result.code, result.message = Code.UPSTREAM_TIMEOUT, f"{rule}: upstream timed out{tries}"
        result.verdict, result.status, result.data = None, None, None
        result.error = f"{result.error + '; ' if result.error else ''}deadline of {policy.deadline:.3g}s passed"
        return result


async def _attempts(call: _Call, target_health: TargetHealth) -> Result:
    """Attempts until one settles the call, the policy stops retrying, or the deadline is near."""
    attempt = 0
    while True:
        timeout = call.policy.attempt_timeout(call.deadline.remaining())
        if timeout < MIN_ATTEMPT and attempt > 0:
            # The wait before this retry ate what was left (a sleep can overrun a little): a request
            # now could only time out, so the call ends with the last attempt's answer.
            result = call.progress.result
            result.error = f"{result.error}; deadline reached before attempt {attempt + 1}"
            return result
        attempt += 1
        outcome = await _attempt(call, target_health, attempt, timeout)
        if outcome is None:  # the provider refused our token: a new one, and this attempt again
            attempt -= 1
            continue
        result = call.progress.result
        if _health_failure(call.policy, outcome):
            target_health.record_failure(outcome.detail)
        else:
            target_health.record_success()
        decision = call.policy.decide(outcome, attempt, call.method, call.deadline)
        if not decision.retry:
            if decision.reason == "deadline" and outcome.kind != "ok":
                result.error = f"{result.error}; next wait {decision.wait:.2f}s would pass the deadline"
            return result
        if call.metrics is not None:
            call.metrics.retried(call.runtime.name)
        await asyncio.sleep(decision.wait)
        target_health = _next_target(call.runtime.health, target_health)


async def _attempt(call: _Call, target_health: TargetHealth, attempt: int, timeout: float) -> Outcome | None:
    """One attempt to `target_health`'s target; its Result becomes `call.progress.result`. None: the
    provider refused the credential, which has been renewed, and the attempt is to be repeated."""
    runtime = call.runtime
    target = runtime.targets[target_health.name]
    req = _retarget(call.base, target)
    observed = call.on_attempt(req, target.name, attempt) if call.on_attempt is not None else None
    await runtime.credential.apply(req)
    if runtime.signer is not None:
        runtime.signer.sign(req, time.time())
    started = time.perf_counter()
    sent = await _send(call.session, req, timeout, runtime.ssl)
    elapsed = time.perf_counter() - started
    if call.metrics is not None:
        call.metrics.observe_upstream(runtime.name, target.name, elapsed)
    result = Result(Code.GATEWAY_INTERNAL, "", attempts=attempt, target=target.name,
                    upstream_ms=(call.progress.result.upstream_ms or 0.0) + elapsed * 1000)
    call.progress.result = result
    outcome: Outcome | None
    if isinstance(sent, Outcome):
        outcome = sent
        result.code, result.message = _failure(outcome, call.rule, attempt)
        result.error = outcome.detail
        result.status = outcome.status
    else:
        outcome = await _answered(call, result, *sent)
    if observed is not None:
        observed.end(result.status, result.code, result.error)
    if outcome is None:
        await runtime.credential.refresh()
    return outcome


async def _answered(call: _Call, result: Result, status: int, headers: CIMultiDictProxy[str],
                    body: bytes) -> Outcome | None:
    """The provider answered: its verdict into `result`. None when the answer says the credential
    was refused and it has not been renewed yet during this call."""
    result.status, result.headers, result.raw_body = status, headers, body
    result.retry_after = headers.get("retry-after")
    if len(body) > CLASSIFY_INLINE_BYTES or (len(body) > 16 * 1024 and "content-encoding" in headers):
        # Decoding and parsing a large answer (or one that may inflate) takes a while: in a
        # thread, so other callers keep being served meanwhile.
        verdict = await asyncio.to_thread(_classify, call.runtime, call.rule, status, headers, body)
    else:
        verdict = _classify(call.runtime, call.rule, status, headers, body)
    result.verdict = verdict
    result.code, result.message, result.data = verdict.code, verdict.message, verdict.result_data
    result.error = verdict.detail
    if ((verdict.code != 0 or verdict.provider_code is not None) and not call.refreshed
            and call.runtime.credential.rejected(status, verdict.provider_code)):
        call.refreshed = True
        return None
    if verdict.code:
        return Outcome.answer(status, verdict.code, result.retry_after, detail=verdict.detail)
    return Outcome.answer(status)


def _classify(runtime: ServiceRuntime, rule: str, status: int, headers: CIMultiDictProxy[str],
              body: bytes) -> Verdict:
    try:
        decoded = decode_body(headers, body)
    except decompress.DecodedTooLarge:
        return Verdict(Code.UPSTREAM_UNREADABLE, f"{rule}: upstream answer unreadable", None,
                       detail=f"answer decodes to more than {MAX_BODY // MIB} MiB")
    except (ValueError, OSError, EOFError):
        return Verdict(Code.UPSTREAM_UNREADABLE, f"{rule}: upstream answer unreadable", None,
                       detail=f"bad content-encoding {headers.get('content-encoding')!r}")
    success = 200 <= status < 300
    content_type = headers.get("content-type", "").lower()
    if success and content_type.startswith(MEDIA_TYPES):
        # A binary success (WeChat QR codes, media downloads) has no JSON to judge: it passes as it came.
        return Verdict(Code.OK, "success", BINARY_BODY)
    verdict = runtime.adapter.classify(ProviderAnswer(status, headers, decoded), rule)
    if success and verdict.code == Code.UPSTREAM_UNREADABLE and content_type.startswith("application/octet-stream"):
        # octet-stream is also what sloppy servers label JSON with, so the adapter reads it first; only
        # what it cannot read is taken for a file download.
        return Verdict(Code.OK, "success", BINARY_BODY)
    if runtime.signer is not None and 200 <= status < 300:
        try:
            runtime.signer.verify_response(status, headers, decoded)
        except GatewayError as exc:
            return Verdict(exc.code, exc.message, None, detail=exc.detail or "response signature check failed")
    return verdict
