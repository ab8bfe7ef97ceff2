"""Operating a running gateway (SPEC 10): the admin listener's probes and /status, hot reload of the
rules directory (add, edit, break, remove; under load; SIGHUP), remote rules over HTTP, and what
stored flows hold (a `-w` flow file, mitmweb's flow list)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import signal
import socket
import ssl
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from mitmproxy import exceptions
from mitmproxy import io as mitmio
from prometheus_client.parser import text_string_to_metric_families

from addons import rules_cache
from addons.chain.admin import clean, is_loopback, parse_address
from addons.chain.context import GatewayContext
from addons.chain.watch import Watch
from addons.redact import Redactor
from addons.rules.remote import split_documents
from tests.conftest import free_port, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "order-service", "s3cret-order-ops-4d2c"
INJECTED = "injected-provider-key-91b7e3"


def demo_service(fake: FakeProvider, methods: str = "hello: {method: GET, path: /hello}", quota: str = "[]") -> str:
    return f"""
        service: demo
        hosts: [api.demo.test]
        upstream: {{url: "{fake.url}", timeout: 2s}}
        credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
        quota: {quota}
        methods:
          {methods}
    """


def service_file(name: str, fake: FakeProvider, method: str = "ping", path: str = "/ping") -> str:
    return f"""
        service: {name}
        hosts: [api.{name}.test]
        upstream: {{url: "{fake.url}", timeout: 2s}}
        methods:
          {method}: {{method: GET, path: {path}}}
    """


APPS = f"""
    apps:
      {APP}: {{secret: {APP_SECRET}}}
      late-app: {{secret: "${{LATE_APP_SECRET_UNSET}}"}}
    gateway: {{require_app: true, unknown_hosts: deny}}
"""


def base_rules(tmp_path: Path, fake: FakeProvider) -> Path:
    return write_rules(tmp_path / "rules", {"demo.yaml": demo_service(fake), "apps.yaml": APPS})


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    r = requests.get(url, timeout=5)
    return r.status_code, r.json()


def status(gw: Gateway) -> dict[str, Any]:
    code, body = get_json(gw.admin + "/status")
    assert code == 200
    return body


def call(gw: Gateway, url: str, **kwargs: Any) -> dict[str, Any]:
    r = requests.get(url, proxies=gw.proxies(APP, APP_SECRET), timeout=10, **kwargs)
    return r.json()


def code_of(gw: Gateway, url: str) -> int:
    return int(call(gw, url)["code"])


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = requests.get(gw.admin + "/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def ready(gw: Gateway) -> bool:
    return requests.get(gw.admin + "/readyz", timeout=2).status_code == 200


@pytest.fixture
def hello(fake: FakeProvider) -> FakeProvider:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    fake.on("GET", "/ping", Reply(200, {"pong": True}))
    fake.on("GET", "/pong", Reply(200, {"pong": True}))
    return fake


# -- admin listener -----------------------------------------------------------------------------------


def test_probes_and_status_show_everything_but_secrets(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    rules = base_rules(tmp_path, hello)
    # A quota, so that calls use the state store.
    write_rules(rules, {"demo.yaml": demo_service(hello, quota="[{limit: 100000/min, per: app}]")})
    write_rules(rules, {"off.yaml": """
        service: off
        hosts: [api.off.test]
        upstream: {url: "https://api.off.test"}
        credentials: {type: static, query: key, value: "${OFF_KEY_NOT_SET}"}
    """})
    # Redis that cannot be reached (nothing listens there), with a password in its URL: the instance
    # degrades but stays ready, and the password never shows.
    redis_url = f"redis://:redis-pass-6b1f0e@127.0.0.1:{free_port()}/0"
    with Gateway(rules, confdir, redis=redis_url, env={"DEMO_KEY": INJECTED}) as gw:
        wait_until(lambda: ready(gw), 10, what="/readyz 200")
        assert code_of(gw, "http://api.demo.test/hello") == 0  # counts a quota: the store notices Redis is down
        code, health = get_json(gw.admin + "/healthz")
        assert code == 200 and health["status"] == "alive"

        def degraded() -> dict[str, Any] | None:
            c, body = get_json(gw.admin + "/readyz")
            return body if c == 200 and body.get("degraded") == ["state"] else None

        readyz = wait_until(degraded, 10, what="/readyz 200 and degraded by the state store")
        assert readyz["ready"] is True  # type: ignore[index]

        body = requests.get(gw.admin + "/status", timeout=5).text
        doc = json.loads(body)
        assert doc["ready"] is True and doc["degraded"] == ["state"]
        assert doc["rules"]["loaded"] and len(doc["rules"]["version"]) == 12
        assert sorted(Path(f).name for f in doc["rules"]["files"]) == ["apps.yaml", "demo.yaml", "off.yaml"]
        assert doc["rules"]["last_reload_ok"] is True and doc["rules"]["last_reload_at"]
        assert doc["rules"]["watch"]["mode"] in ("inotify", "polling")
        assert doc["services"]["demo"]["enabled"] is True and doc["services"]["demo"]["methods"] == ["hello"]
        assert doc["services"]["off"]["enabled"] is False
        assert "OFF_KEY_NOT_SET" in doc["services"]["off"]["disabled_reason"]
        assert doc["apps"]["enabled"] == [APP]
        assert "LATE_APP_SECRET_UNSET" in doc["apps"]["disabled"]["late-app"]
        assert [t["target"] for t in doc["health"]["demo"]["targets"]] == ["primary"]
        assert doc["health"]["demo"]["targets"][0]["up"] is True
        state = doc["state"]
        assert state["backend"] and state["available"] is False and state["last_error"]
        assert "redis-pass-6b1f0e" not in state["url"] and "***" in state["url"]
        assert doc["access_log"]["dropped"] == 0
        for secret in (INJECTED, APP_SECRET, "redis-pass-6b1f0e"):
            assert secret not in body, f"{secret} in /status"
            assert secret not in requests.get(gw.admin + "/metrics", timeout=5).text
        assert requests.get(gw.admin + "/nope", timeout=5).status_code == 404
    for secret in (INJECTED, APP_SECRET, "redis-pass-6b1f0e"):
        assert secret not in gw.output(), f"{secret} in the gateway's output"
        assert secret not in gw.log_path.read_text(), f"{secret} in the access log"


def test_admin_port_in_use_is_a_clear_start_error(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    gw = Gateway(base_rules(tmp_path, hello), confdir, env={"DEMO_KEY": INJECTED})
    with socket.socket() as busy:
        # The admin port the harness chose is taken before the gateway starts. (Not a second
        # `--set gateway_admin=`: mitmproxy refuses an option given twice.)
        busy.bind(("127.0.0.1", gw.admin_port or 0))
        busy.listen(1)
        gw.start(expect_ready=False)
        try:
            wait_until(lambda: gw.proc is not None and gw.proc.poll() is not None, 30, what="gateway to exit")
            assert gw.proc is not None and gw.proc.returncode != 0
            assert f"gateway_admin: cannot listen on 127.0.0.1:{gw.admin_port}" in gw.output()
            assert "in use" in gw.output()
        finally:
            gw.stop()


def test_admin_address_parsing_and_loopback() -> None:
    assert parse_address("127.0.0.1:9091") == ("127.0.0.1", 9091)
    assert parse_address("[::1]:9091") == ("::1", 9091)
    for bad in ("9091", ":9091", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(exceptions.OptionsError, match="host:port"):
            parse_address(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_status_values_are_redacted() -> None:
    redactor = Redactor()
    redactor.add_secret("known-secret-value-123")
    doc = clean({
        "url": "https://user:pw-123456@host/x?access_token=abc123456&q=1",
        "token_url": "https://host/token?client_secret=s3cr3t-99",
        "client_secret": "anything",
        "last_error": "upstream said known-secret-value-123 for 13812345678",
        "nested": [{"password": "p"}],
    }, redactor)
    text = json.dumps(doc)
    for leaked in ("pw-123456", "abc123456", "s3cr3t-99", "anything", "known-secret-value-123", "13812345678"):
        assert leaked not in text
    assert doc["nested"] == [{"password": "***"}] and "q=1" in doc["url"]


def test_admin_off(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    with Gateway(base_rules(tmp_path, hello), confdir, env={"DEMO_KEY": INJECTED}, admin=False) as gw:
        assert code_of(gw, "http://api.demo.test/hello") == 0
        assert "admin listener off" in gw.output()


# -- hot reload of the rules directory ---------------------------------------------------------------


def test_rule_file_added_edited_broken_and_removed(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    rules = base_rules(tmp_path, hello)
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}) as gw:
        wait_until(lambda: ready(gw), 10, what="/readyz 200")
        assert code_of(gw, "http://api.second.test/ping") == -2003  # nobody owns the host yet
        errors_before = metric(gw, "gateway_rules_reloads_total", result="error")

        # Added: in force within 2 s (the margin is the probe call's own time).
        started = time.monotonic()
        write_rules(rules, {"second.yaml": service_file("second", hello)})
        wait_until(lambda: code_of(gw, "http://api.second.test/ping") == 0, 2.5, what="the new service")
        assert time.monotonic() - started < 2.5
        version_added = status(gw)["rules"]["version"]

        # Edited: the method is renamed.
        write_rules(rules, {"second.yaml": service_file("second", hello, method="pong", path="/pong")})
        wait_until(lambda: status(gw)["services"]["second"]["methods"] == ["pong"], 2.5, what="the edit")
        rid = "edited-call-0001"
        requests.get("http://api.second.test/pong", headers={"X-Request-ID": rid},
                     proxies=gw.proxies(APP, APP_SECRET), timeout=10)
        assert gw.log_for(rid)["method"] == "pong"
        version_edited = status(gw)["rules"]["version"]
        assert version_edited != version_added

        # Broken: the rules in force stay entirely; the error shows with file:line.
        (rules / "second.yaml").write_text("service: second\nhosts: [api.second.test]\nupstream: {url: [\n")
        doc = wait_until(lambda: (s := status(gw)) and not s["rules"]["last_reload_ok"] and s, 2.5,
                         what="the reload error in /status")
        problems = doc["rules"]["last_reload_error"]  # type: ignore[index]
        assert any(re.match(re.escape(str(rules / "second.yaml")) + r":\d+: ", p) for p in problems), problems
        assert doc["rules"]["version"] == version_edited  # type: ignore[index]
        assert metric(gw, "gateway_rules_reloads_total", result="error") == errors_before + 1
        assert code_of(gw, "http://api.second.test/pong") == 0
        assert code_of(gw, "http://api.demo.test/hello") == 0
        assert "second.yaml:" in gw.output()  # the log names the file and line too

        # Removed: the service is gone, the error is cleared.
        (rules / "second.yaml").unlink()
        wait_until(lambda: code_of(gw, "http://api.second.test/pong") == -2003, 2.5, what="the removal")
        doc = status(gw)
        assert "second" not in doc["services"] and doc["rules"]["last_reload_ok"] is True
        assert code_of(gw, "http://api.demo.test/hello") == 0


def test_reload_during_a_burst_of_calls_fails_none(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    rules = base_rules(tmp_path, hello)
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}) as gw:
        wait_until(lambda: ready(gw), 10, what="/readyz 200")
        reloads_before = metric(gw, "gateway_rules_reloads_total", result="success")
        stop = threading.Event()
        results: list[tuple[int, int | None]] = []
        failures: list[str] = []
        lock = threading.Lock()

        def caller() -> None:
            with requests.Session() as session:
                session.proxies = gw.proxies(APP, APP_SECRET)
                while not stop.is_set():
                    try:
                        r = session.get("http://api.demo.test/hello", timeout=10)
                        entry = (r.status_code, r.json().get("code"))
                    except Exception as exc:  # a dropped connection is a failed call too
                        with lock:
                            failures.append(repr(exc))
                        continue
                    with lock:
                        results.append(entry)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 6
            n = 0
            while time.monotonic() < deadline:
                n += 1
                # Every change rebuilds the demo service (a new method) and adds or drops a file.
                extra = "hello: {method: GET, path: /hello}\n          " + f"extra{n}: {{method: GET, path: /x{n}}}"
                write_rules(rules, {"demo.yaml": demo_service(hello, extra)})
                if n % 2:
                    write_rules(rules, {f"other{n}.yaml": service_file(f"other{n}", hello)})
                else:
                    for old in rules.glob("other*.yaml"):
                        old.unlink()
                if n % 3 == 0:
                    assert gw.proc is not None
                    gw.proc.send_signal(signal.SIGHUP)
                time.sleep(0.6)  # pacing the edits, not waiting for a result
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        reloads = metric(gw, "gateway_rules_reloads_total", result="success") - reloads_before
    assert not failures, failures[:5]
    assert len(results) > 50
    bad = [r for r in results if r != (200, 0)]
    assert not bad, bad[:5]
    assert reloads >= 5, f"only {reloads} reloads happened during the burst"


def test_sighup_reloads_at_once(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    rules = base_rules(tmp_path, hello)
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}) as gw:
        wait_until(lambda: ready(gw), 10, what="/readyz 200 (the SIGHUP handler is installed by then)")
        assert gw.proc is not None
        before = metric(gw, "gateway_rules_reloads_total", result="success")
        gw.proc.send_signal(signal.SIGHUP)  # nothing changed: still a reload
        wait_until(lambda: metric(gw, "gateway_rules_reloads_total", result="success") == before + 1, 5,
                   what="the SIGHUP reload")
        # A change followed at once by SIGHUP: the signal's reload comes before the watcher's debounce.
        write_rules(rules, {"second.yaml": service_file("second", hello)})
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "loaded (SIGHUP)" in gw.output(), 5, what="the rules loaded by SIGHUP")
        assert code_of(gw, "http://api.second.test/ping") == 0
        assert gw.proc.poll() is None


# -- the watcher's pieces ------------------------------------------------------------------------------


class FakeRules:
    def __init__(self) -> None:
        self.remote_sources: list[tuple[str, str]] = []
        self.reasons: list[str] = []

    def reload(self, reason: str = "reload") -> list[Any]:
        self.reasons.append(reason)
        return []

    async def reload_async(self, reason: str = "reload") -> list[Any]:
        return self.reload(reason)


async def test_watcher_falls_back_to_polling_when_inotify_fails(tmp_path: Path) -> None:
    rules = FakeRules()
    watch = Watch(GatewayContext(), rules)  # type: ignore[arg-type]
    calls: list[bool] = []
    stop = threading.Event()

    async def fake_awatch(*_paths: str, force_polling: bool = False, **_kw: Any) -> AsyncIterator[set[Any]]:
        calls.append(force_polling)
        if not force_polling:
            raise OSError(28, "inotify watch limit reached")
        yield {(2, str(tmp_path / "a.yaml"))}
        stop.set()

    watch.awatch = fake_awatch
    await asyncio.wait_for(watch._watch(str(tmp_path), stop), 5)
    assert calls == [False, True]
    assert rules.reasons == ["file change: a.yaml"]


def test_feed_documents_split_at_separator_lines() -> None:
    body = "# feed\n---\nservice: a\nx: 1\n--- # second\nservice: b\n...\n---\n# only a comment\n---\n"
    assert split_documents(body) == ["service: a\nx: 1\n", "service: b\n"]
    assert split_documents("service: a\n") == ["service: a\n"]
    assert split_documents("") == []


# -- remote rules ------------------------------------------------------------------------------------


class Feed:
    """An HTTP server for remote rules: serves `body` with an ETag, answers 304 to a matching
    If-None-Match, or `status` when set; records every request's headers."""

    def __init__(self) -> None:
        self.body = ""
        self.status: int | None = None
        self.seen: list[dict[str, str]] = []
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                feed.seen.append(headers)
                if feed.status is not None:
                    self.send_response(feed.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = feed.body.encode()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if headers.get("if-none-match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/yaml")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed() -> Iterator[Feed]:
    server = Feed()
    yield server
    server.close()


def test_remote_rules_with_304_broken_document_and_fetch_errors(tmp_path: Path, confdir: Path,
                                                                 hello: FakeProvider, feed: Feed) -> None:
    remote1 = textwrap.dedent(service_file("remote1", hello))
    remote2 = textwrap.dedent(service_file("remote2", hello))
    feed.body = "---\n" + remote1 + "\n---\n" + remote2
    url = f"http://feeduser:feed-pass-5531@127.0.0.1:{feed.port}/rules.yaml?token=feed-token-8842&env=prod"
    args = ["--set", f"gateway_rules_url={url}", "--set", "gateway_rules_poll=1"]
    with Gateway(base_rules(tmp_path, hello), confdir, env={"DEMO_KEY": INJECTED}, args=args) as gw:
        wait_until(lambda: ready(gw), 10, what="/readyz 200 after the first fetch")
        wait_until(lambda: code_of(gw, "http://api.remote1.test/ping") == 0, 5, what="remote1 in force")
        assert code_of(gw, "http://api.remote2.test/ping") == 0
        assert code_of(gw, "http://api.demo.test/hello") == 0  # local and remote together
        doc = status(gw)
        remote = doc["rules"]["remote"]
        assert [d.rsplit("#", 1)[1] for d in remote["documents"]] == ["1", "2"]
        assert remote["ok"] is True and remote["last_error"] is None
        assert feed.seen[0]["authorization"] == "Basic " + base64.b64encode(b"feeduser:feed-pass-5531").decode()

        # Unchanged: the feed is asked with If-None-Match and answers 304; nothing reloads.
        version = doc["rules"]["version"]
        wait_until(lambda: status(gw)["rules"]["remote"]["not_modified"] >= 1, 5, what="a 304")
        assert any("if-none-match" in h for h in feed.seen)
        assert status(gw)["rules"]["version"] == version

        # A broken second document: refused whole, the rules in force stay.
        errors_before = metric(gw, "gateway_rules_reloads_total", result="error")
        feed.body = remote1 + "---\nservice: remote2\nhosts: [api.remote2.test]\nupstrem: {url: x}\n"
        doc = wait_until(lambda: (s := status(gw)) and s["rules"]["remote"]["rejected"] and s, 5,
                         what="the broken document refused")
        rejected = doc["rules"]["remote"]["rejected"]  # type: ignore[index]
        assert any(re.search(r"#2:\d+: ", p) for p in rejected), rejected
        assert doc["rules"]["version"] == version  # type: ignore[index]
        assert code_of(gw, "http://api.remote2.test/ping") == 0
        assert metric(gw, "gateway_rules_reloads_total", result="error") == errors_before + 1
        # Refused once: the same body is not tried again on every poll.
        polls = len(feed.seen)
        wait_until(lambda: len(feed.seen) >= polls + 2, 5, what="two more polls")
        assert metric(gw, "gateway_rules_reloads_total", result="error") == errors_before + 1

        # A remote document naming a service that is defined locally: an error, not an override.
        feed.body = remote1 + "---\n" + textwrap.dedent(demo_service(hello))
        wait_until(lambda: any("already defined" in p for p in status(gw)["rules"]["remote"]["rejected"]), 5,
                   what="the duplicate refused")
        assert code_of(gw, "http://api.demo.test/hello") == 0

        # The feed fails: the documents in force stay; the error is shown.
        feed.status = 500
        wait_until(lambda: (status(gw)["rules"]["remote"]["last_error"] or "").startswith("HTTP 500"), 5,
                   what="the fetch error in /status")
        assert code_of(gw, "http://api.remote1.test/ping") == 0
        wait_until(lambda: len(feed.seen) >= polls + 6, 10, what="more failing polls")
        assert gw.output().count("not fetched: HTTP 500") == 1  # logged once per change of state

        # Back, with a changed document set: only remote1 now.
        feed.status = None
        feed.body = remote1
        wait_until(lambda: code_of(gw, "http://api.remote2.test/ping") == -2003, 5, what="remote2 dropped")
        doc = status(gw)
        assert doc["rules"]["remote"]["ok"] is True and len(doc["rules"]["remote"]["documents"]) == 1
        assert "reachable again" in gw.output()
        body = requests.get(gw.admin + "/status", timeout=5).text
    for secret in ("feed-pass-5531", "feed-token-8842"):
        assert secret not in body, f"{secret} in /status"
        assert secret not in gw.output(), f"{secret} in the log"
        assert secret not in gw.log_path.read_text()


def test_unreachable_feed_at_start_without_a_saved_copy_serves_local_rules_but_is_not_ready(
        tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    args = ["--set", f"gateway_rules_url=http://127.0.0.1:{free_port()}/rules", "--set", "gateway_rules_poll=1"]
    gw = Gateway(base_rules(tmp_path, hello), confdir, env={"DEMO_KEY": INJECTED}, args=args)
    gw.start(expect_ready=False)
    try:
        wait_until(lambda: (status(gw)["rules"]["remote"] or {}).get("failures", 0) >= 2, 30,
                   what="two failed fetches")
        code, body = get_json(gw.admin + "/readyz")
        assert code == 503 and body["remote_rules"] == "none" and "no saved copy" in body["reason"]
        remote = status(gw)["rules"]["remote"]
        assert remote["last_error"] and remote["documents"] == [] and remote["in_force"] == "none"
        assert code_of(gw, "http://api.demo.test/hello") == 0  # the local rules serve meanwhile
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        gw.stop()


def test_restart_during_a_feed_outage_serves_the_saved_feed(tmp_path: Path, confdir: Path, hello: FakeProvider,
                                                            feed: Feed) -> None:
    feed.body = textwrap.dedent(service_file("remote1", hello))
    rules = base_rules(tmp_path, hello)
    args = ["--set", f"gateway_rules_url=http://127.0.0.1:{feed.port}/rules", "--set", "gateway_rules_poll=1"]
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}, args=args) as gw:
        wait_until(lambda: code_of(gw, "http://api.remote1.test/ping") == 0, 10, what="remote1 in force")
        wait_until(lambda: status(gw)["rules"]["remote"]["cache"]["saved_at"], 5, what="the feed saved")
        assert get_json(gw.admin + "/readyz")[1]["remote_rules"] == "feed"
    saved = tmp_path / "rules.remote-cache"  # beside the rules directory, not in it
    assert saved.exists() and (saved.stat().st_mode & 0o777) == 0o600
    feed.status = 503  # the feed is down while the gateway restarts
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}, args=args) as gw:
        code, body = get_json(gw.admin + "/readyz")
        assert code == 200 and body["remote_rules"] == "cache"
        assert code_of(gw, "http://api.remote1.test/ping") == 0  # what the fleet served
        wait_until(lambda: (status(gw)["rules"]["remote"]["last_error"] or "").startswith("HTTP 503"), 10,
                   what="the outage in /status")
        assert status(gw)["rules"]["remote"]["in_force"] == "cache"
        feed.status = None  # back: the feed's own copy (the same documents) is in force again
        wait_until(lambda: status(gw)["rules"]["remote"]["in_force"] == "feed", 10, what="the feed in force")


def test_a_saved_feed_that_no_longer_fits_the_local_rules_does_not_stop_the_start(
        tmp_path: Path, confdir: Path, hello: FakeProvider, feed: Feed) -> None:
    rules = base_rules(tmp_path, hello)
    url = f"http://127.0.0.1:{feed.port}/rules"
    # Saved while it fitted; since then a local file defines the same service. Refused at start
    # (an ERROR logged then would make mitmproxy exit): the gateway starts and asks the feed.
    rules_cache.save(str(tmp_path / "rules.remote-cache"), url, textwrap.dedent(service_file("remote1", hello)))
    write_rules(rules, {"remote1.yaml": service_file("remote1", hello)})
    feed.body = textwrap.dedent(service_file("remote2", hello))
    args = ["--set", f"gateway_rules_url={url}", "--set", "gateway_rules_poll=1"]
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}, args=args) as gw:
        assert code_of(gw, "http://api.remote1.test/ping") == 0  # the local file
        wait_until(lambda: code_of(gw, "http://api.remote2.test/ping") == 0, 10, what="the feed in force")
        remote = status(gw)["rules"]["remote"]
        assert remote["in_force"] == "feed" and remote["documents"] == [f"{url}#1"]
        assert gw.proc is not None and gw.proc.poll() is None


# -- stored flows ------------------------------------------------------------------------------------


def test_saved_flow_file_holds_no_credentials(tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    hello.on("GET", "/broken", Reply(500, {"err": "boom"}))
    rules = base_rules(tmp_path, hello)
    write_rules(rules, {"demo.yaml": demo_service(
        hello, "hello: {method: GET, path: /hello}\n          broken: {method: GET, path: /broken}")})
    flows_path = tmp_path / "flows.mitm"
    caller_key, caller_token = "apps-own-key-55e1c0", "caller-token-a7b3d9"
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}, args=["-w", str(flows_path)]) as gw:
        r = requests.get(f"http://api.demo.test/hello?access_token={caller_token}&q=1",
                         headers={"X-Api-Key": caller_key, "X-Request-ID": "saved-http-0001"},
                         proxies=gw.proxies(APP, APP_SECRET), timeout=10)
        assert r.json()["code"] == 0
        with httpx.Client(proxy=gw.proxy(APP, APP_SECRET), verify=ssl.create_default_context(cafile=gw.ca),
                          timeout=10) as client:
            r2 = client.get("https://api.demo.test/hello", headers={"X-Request-ID": "saved-https-0001",
                                                                     "Authorization": f"Bearer {caller_token}"})
            assert r2.json()["code"] == 0
            r3 = client.get("https://api.demo.test/broken", headers={"X-Request-ID": "saved-fail-0001"})
            assert r3.json()["code"] != 0
        with pytest.raises(httpx.ProxyError), httpx.Client(
                proxy=gw.proxy(APP, "wrong-secret-xyz"), verify=ssl.create_default_context(cafile=gw.ca),
                timeout=10) as client:
            client.get("https://api.demo.test/hello")
        assert hello.hits("/hello")[0].headers["x-api-key"] == INJECTED  # it was injected upstream
    raw = flows_path.read_bytes()
    basic = base64.b64encode(f"{APP}:{APP_SECRET}".encode())
    for secret in (INJECTED.encode(), APP_SECRET.encode(), basic, b"wrong-secret-xyz", caller_key.encode(),
                   caller_token.encode()):
        assert secret not in raw, f"{secret!r} in the saved flows"
    assert b"proxy-authorization" not in raw.lower()

    with flows_path.open("rb") as f:
        flows = list(mitmio.FlowReader(f).stream())
    by_id = {fl.request.headers.get("x-request-id"): fl for fl in flows}  # type: ignore[attr-defined]
    assert set(by_id) >= {"saved-http-0001", "saved-https-0001", "saved-fail-0001"}
    plain = by_id["saved-http-0001"]
    assert plain.comment == f"{APP} -> demo.hello code=0 attempts=1" and not plain.marked
    assert plain.request.headers["X-Api-Key"] == "***"  # type: ignore[attr-defined]
    assert plain.request.query["access_token"] == "***" and plain.request.query["q"] == "1"  # type: ignore[attr-defined]
    assert by_id["saved-https-0001"].request.headers["Authorization"] == "***"  # type: ignore[attr-defined]
    failed = by_id["saved-fail-0001"]
    assert failed.marked == ":warning:" and failed.comment.startswith(f"{APP} -> demo.broken code=-")


def web_token(gw: Gateway) -> str | None:
    match = re.search(r"token=([0-9a-f]{32})", gw.output())
    return match.group(1) if match else None


def test_mitmweb_runs_the_chain_comments_flows_and_keeps_only_the_newest(
        tmp_path: Path, confdir: Path, hello: FakeProvider) -> None:
    hello.on("GET", "/broken", Reply(503, {"err": "down"}))
    rules = base_rules(tmp_path, hello)
    write_rules(rules, {"demo.yaml": demo_service(
        hello, "hello: {method: GET, path: /hello}\n          broken: {method: GET, path: /broken}")})
    web_port = free_port()
    args = ["--web-host", "127.0.0.1", "--web-port", str(web_port), "--set", "web_open_browser=false",
            "--set", "gateway_web_keep=3"]
    with Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}, args=args, ui="mitmweb") as gw:
        token = wait_until(lambda: web_token(gw), 20, what="mitmweb's token in its output")
        web = f"http://127.0.0.1:{web_port}"
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(5):
            assert code_of(gw, f"http://api.demo.test/hello?n={i}") == 0
        assert code_of(gw, "http://api.demo.test/broken") != 0

        def listed() -> list[dict[str, Any]] | None:
            r = requests.get(web + "/flows", headers=auth, timeout=5)
            flows = r.json() if r.status_code == 200 else []
            return flows if len(flows) == 3 and any(f["marked"] for f in flows) else None

        flows = wait_until(listed, 10, what="the 3 newest flows in mitmweb")
        comments = [f["comment"] for f in flows]  # type: ignore[union-attr]
        assert f"{APP} -> demo.hello code=0 attempts=1" in comments
        assert any(c.startswith(f"{APP} -> demo.broken code=-1003") for c in comments), comments
        listing = json.dumps(flows)
        assert "n=0" not in listing and "n=4" in listing  # the oldest went, the newest stayed
        assert APP_SECRET not in listing and "proxy-authorization" not in listing.lower()
        assert requests.get(web + "/flows", timeout=5).status_code == 403  # mitmweb's own auth still holds

        # The gateway.reload command through mitmweb's command API.
        # mitmweb checks a double-submit XSRF token (cookie and header equal) on POST.
        xsrf = "0123456789abcdef0123456789abcdef"
        r = requests.post(web + "/commands/gateway.reload", json={"arguments": []}, timeout=5,
                          headers={**auth, "X-XSRFToken": xsrf}, cookies={"_mitmproxy_xsrf": xsrf})
        assert r.status_code == 200 and "error" not in r.json(), r.text
        wait_until(lambda: "reloading the rules (gateway.reload command)" in gw.output(), 5,
                   what="the command's reload in the log")
        assert code_of(gw, "http://api.demo.test/hello") == 0

