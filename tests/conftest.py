"""Shared fixtures: free ports, a private redis-server per test session, deadlines instead of sleeps."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # a definitive failure (e.g. the process under test exited): no point waiting
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


async def until(probe: Callable[[], object], timeout: float = 5.0, what: str = "condition",
                interval: float = 0.02) -> Any:
    """Poll `probe` (sync, or returning an awaitable) on the running loop until it gives something
    truthy, or fail after `timeout` seconds; the other tasks run between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class RedisServer:
    """A private redis-server on a free port; can be stopped and restarted on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (run_tests.sh installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._ping, 10, what=f"redis-server on {self.port}")

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean Redis for one test: REDIS_URL when set (then not flushed: use unique keys), else ours."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the whole run (mitmproxy creates it on the first start), like certs/ in production."""
    return tmp_path_factory.mktemp("certs")


@pytest.fixture
def fake() -> Iterator[object]:
    from tests.fakes import FakeProvider

    provider = FakeProvider()
    yield provider
    provider.close()


@pytest.fixture
def gateways() -> Iterator[list[object]]:
    """Gateways a test starts: all stopped at its end, with what each saw printed (shown on failure)."""
    started: list = []
    yield started
    for gw in started:
        gw.stop()
        # Captured by pytest and shown only when the test failed: what each instance saw.
        print(f"--- gateway on port {gw.port}: calls not answered with code 0")
        for line in gw.log_lines():
            if line.get("code") != 0:
                print(line)
        print(f"--- gateway on port {gw.port}: output")
        print("\n".join(line for line in gw.output().splitlines() if "client " not in line)[-4000:])


# -- the `unit` marker: `pytest -m unit` is the quick inner loop --------------------------------------

# Test modules whose tests start no subprocess (no mitmdump, no redis-server, no `python -m addons`).
# In the last two, the tests that use redis-server (its fixtures, or a "redis" parameter) are not unit.
UNIT_MODULES = frozenset({
    "test_envelope.py", "test_explicit.py", "test_fail_closed.py", "test_health.py", "test_hostile_units.py",
    "test_quota.py", "test_redact.py", "test_retry.py", "test_signing.py", "test_wechatpay_v3.py",
    "test_tokens.py", "test_state.py", "test_remote_feed.py", "test_cache_glue.py", "test_dashboard.py",
    "test_egress_policy.py", "test_forwarder.py", "test_shaping.py", "test_shaping_glue.py", "test_statuspage.py",
    "test_tracing.py", "test_dispatch.py", "test_heap.py", "test_resp_lane.py",
})
SUBPROCESS_FIXTURES = frozenset({"redis_server", "redis_url", "restart_redis", "gateways", "confdir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_no_subprocess(item):
            item.add_marker(pytest.mark.unit)


def _starts_no_subprocess(item: pytest.Item) -> bool:
    if item.path.name not in UNIT_MODULES:
        return False
    if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return False
    callspec = getattr(item, "callspec", None)
    return callspec is None or "redis" not in callspec.params.values()
