"""Redis with a local fallback: what the gateway uses when `gateway_redis` is set (SPEC 8).

While Redis answers, every decision is Redis's (exact across the fleet). When it does not:

- quotas and nonces follow `state_failure`: `open` decides locally (each quota's limit divided by
  `instances`, since every instance now counts alone) and marks the admission degraded; `closed`
  raises StateUnavailable so the chain answers -3002;
- cached values (tokens) and locks (one refresh at a time) always fall back locally: they only save
  work, and failing them would break calls that have no quota at all;
- the outage is reported once, on the transition (to `on_state_change`, or else as a warning in the
  log), and every call that Redis did not serve increments `errors` and calls `on_error`;
- a dead Redis is not asked on every call: after a failure, one call per `retry_interval` probes it
  (circuit-breaker style) while the others are served locally at once; the first probe that
  succeeds resumes exact counting.

`policy` and `instances` may be changed at any time (rules reload); the local counters are kept.

A misconfigured URL (`misconfigure()`, or a StateMisconfigured from Redis: a wrong password, TLS
that does not verify, the wrong engine) is not an outage: nothing is decided locally in its name.
Quotas and nonces are refused (StateMisconfigured, -3002) until the configuration works; cached
values and locks stay local as in an outage. `checked` is False until the first `verify` of the URL
has told usable, misconfigured or unreachable apart (the instance is not ready before).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, ParamSpec, TypeVar

from addons.state.base import Admission, QuotaCheck, StateUnavailable
from addons.state.memory import MemoryStore
from addons.state.redis import RedisStore, StateMisconfigured
from addons.timestamps import rfc3339

log = logging.getLogger("gateway.state")

Policy = Literal["open", "closed"]

# Lock tokens handed out by the local store carry this mark, so release() goes back to the store
# that granted the lock even if Redis has come back (or gone away) in between.
LOCAL_TOKEN = "local:"

P = ParamSpec("P")
T = TypeVar("T")


class _Missed(enum.Enum):
    """What _shared() returns when Redis did not serve a call (None is a value Redis can give)."""

    MISSED = enum.auto()


MISSED = _Missed.MISSED


class FallbackStore:
    """StateStore over a RedisStore, falling back to a MemoryStore per the `state_failure` policy."""

    backend = "redis"

    def __init__(
        self,
        shared: RedisStore,
        local: MemoryStore | None = None,
        *,
        policy: Policy = "open",
        instances: int = 1,
        retry_interval: float = 1.0,
        on_state_change: Callable[[bool, str], None] | None = None,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.local = local if local is not None else MemoryStore()
        self._policy: Policy = "open"
        self._instances = 1
        self.policy = policy
        self.instances = instances
        self.retry_interval = retry_interval
        self.on_state_change = on_state_change
        self.on_error = on_error
        self._clock = clock
        self.available = True  # until a call says otherwise: construction does not touch Redis
        self.errors = 0  # calls Redis did not serve (failed, or skipped while it is down)
        self.last_error: str | None = None
        self.since = time.time()  # wall time of the last change of `available`
        self._retry_at = 0.0  # clock() after which the next call may probe a dead Redis
        self.misconfigured: str | None = None  # what is wrong with gateway_redis, while it is
        self.checked = False  # the URL was verified once (usable, misconfigured or unreachable)

    # -- runtime settings (rules reload) -------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        if value not in ("open", "closed"):
            raise ValueError(f"state_failure must be 'open' or 'closed', not {value!r}")
        self._policy = value

    @property
    def instances(self) -> int:
        return self._instances

    @instances.setter
    def instances(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"instances must be an integer >= 1, not {value!r}")
        self._instances = value

    def configure(self, *, policy: Policy | None = None, instances: int | None = None) -> None:
        """Apply gateway.yaml's `state_failure` and `instances`; counters are kept."""
        if policy is not None:
            self.policy = policy
        if instances is not None:
            self.instances = instances

    # -- circuit breaker -----------------------------------------------------------------------

    def _try_shared(self) -> bool:
        """Whether this call should go to Redis; False means serve it locally right away."""
        if self.misconfigured is not None:
            self._count_error()
            return False
        if self.available:
            return True
        now = self._clock()
        if now < self._retry_at:
            self._count_error()
            return False
        # This call is the probe; push the next one out now, so calls arriving while it is in
        # flight stay local instead of all piling onto a server that may still be dead.
        self._retry_at = now + self.retry_interval
        return True

    def _count_error(self) -> None:
        self.errors += 1
        if self.on_error is not None:
            try:
                self.on_error()
            except Exception:  # a metrics hook must never fail a call
                log.exception("state store: on_error hook failed")

    def misconfigure(self, problem: str | None) -> None:
        """Mark gateway_redis as unusable (`problem`, a sentence) or, with None, usable again."""
        if problem == self.misconfigured:
            return
        previous, self.misconfigured = self.misconfigured, problem
        self.since = time.time()
        if problem is not None:
            self.last_error = problem
            # A warning, not an error: mitmdump exits on an error logged while it starts, and the
            # instance should stay up (not ready) and recover by itself once the mistake is fixed.
            log.warning("state store: gateway_redis %s cannot be used: %s; calls with quotas or nonces "
                      "are refused until it is fixed", self.shared.url, problem)
        elif previous is not None:
            self.available = True
            log.warning("state store: gateway_redis %s works now, shared counting started", self.shared.url)

    def _failed(self, exc: StateUnavailable) -> None:
        if isinstance(exc, StateMisconfigured):
            self._count_error()
            self.misconfigure(str(exc))
            return
        self._count_error()
        message = str(exc) or "unavailable"
        self.last_error = message
        self._retry_at = self._clock() + self.retry_interval
        if self.available:
            self.available = False
            self.since = time.time()
            if self.on_state_change is None:
                how = (f"deciding locally (limits / {self._instances})" if self._policy == "open"
                       else "refusing calls that need it (state_failure: closed)")
                log.warning("state store: Redis at %s unreachable, %s: %s", self.shared.url, how, message)
            self._notify(False, message)

    def _succeeded(self) -> None:
        if not self.available:
            self.available = True
            self.since = time.time()
            if self.on_state_change is None:
                log.warning("state store: Redis at %s reachable again, shared counting resumed",
                            self.shared.url)
            self._notify(True, "")

    def _notify(self, available: bool, error: str) -> None:
        if self.on_state_change is not None:
            try:
                self.on_state_change(available, error)
            except Exception:
                log.exception("state store: on_state_change hook failed")

    async def _shared(self, operation: Callable[P, Awaitable[T]], *args: P.args,
                      **kwargs: P.kwargs) -> T | _Missed:
        """`operation` on Redis, if the circuit lets this call through; MISSED when it did not, or
        when Redis failed (the failure is recorded), so the caller serves the call locally."""
        if not self._try_shared():
            return MISSED
        try:
            result = await operation(*args, **kwargs)
        except StateUnavailable as exc:
            self._failed(exc)
            return MISSED
        self._succeeded()
        return result

    def _unavailable(self) -> StateUnavailable:
        if self.misconfigured is not None:
            return StateMisconfigured(self.misconfigured)
        return StateUnavailable(self.last_error or "redis: unavailable")

    # -- quotas --------------------------------------------------------------------------------

    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        admission = await self._shared(self.shared.admit, checks, now)
        if admission is not MISSED:
            return admission
        if self._policy == "closed" or self.misconfigured is not None:
            raise self._unavailable()
        return self._admit_locally(checks, now)

    def admit_now(self, checks: list[QuotaCheck], now: float) -> None:
        """Never decided at once: Redis decides (or, failing that, the policy): await admit()."""
        return None

    def _admit_locally(self, checks: list[QuotaCheck], now: float) -> Admission:
        n = self._instances
        if n == 1:
            local = checks
        else:
            # Same key, smaller limit: the local counter of a quota survives a change of `instances`.
            local = [QuotaCheck(c.key, max(1, c.limit // n), c.window, c.offset, c.scope) for c in checks]
        admission = self.local.admit_now(local, now)
        refused = admission.refused
        if refused is not None:
            # Name the configured quota (the chain and the metrics know it), not its local share.
            refused = checks[next(i for i, c in enumerate(local) if c is refused)]
        return Admission(admission.admitted, refused, admission.remaining, degraded=True)

    # -- nonces --------------------------------------------------------------------------------

    async def first_use(self, key: str, ttl: float) -> bool:
        first = await self._shared(self.shared.first_use, key, ttl)
        if first is not MISSED:
            return first
        if self._policy == "closed" or self.misconfigured is not None:
            raise self._unavailable()
        # Local only: a nonce replayed to another instance during the outage is not caught.
        return await self.local.first_use(key, ttl)

    # -- cached values and locks: always served locally when Redis is away -----------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._shared(self.shared.get, key)
        if value is not MISSED:
            return value
        return await self.local.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if await self._shared(self.shared.set, key, value, ttl) is not MISSED:
            return
        await self.local.set(key, value, ttl)

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = await self._shared(self.shared.acquire, key, ttl)
        if token is not MISSED:
            return token
        local = await self.local.acquire(key, ttl)
        return None if local is None else LOCAL_TOKEN + local

    async def release(self, key: str, token: str) -> None:
        """Best effort: a lock that cannot be released in Redis runs out at its TTL."""
        if token.startswith(LOCAL_TOKEN):
            await self.local.release(key, token[len(LOCAL_TOKEN):])
            return
        await self._shared(self.shared.release, key, token)

    async def close(self) -> None:
        await self.shared.close()
        await self.local.close()

    # -- operations ----------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """For /status: never the Redis password (RedisStore keeps only the redacted URL)."""
        return {
            "backend": self.backend,
            "engine": self.shared.kind,
            "url": self.shared.url,
            "available": self.available,
            "degraded": not self.available and self._policy == "open" and self.misconfigured is None,
            "misconfigured": self.misconfigured,
            "checked": self.checked,
            "last_error": self.last_error,
            "since": rfc3339(self.since, "seconds"),
            "policy": self._policy,
            "instances": self._instances,
            "errors": self.errors,
        }
