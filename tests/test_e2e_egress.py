"""Egress control (SPEC 12) through a real mitmdump: what an app can reach, tried as an attacker would."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
from pathlib import Path

import requests

from tests.conftest import RedisServer, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

SECRET = "s3cret-egress"
AUTH = "Proxy-Authorization: Basic " + base64.b64encode(f"app:{SECRET}".encode()).decode() + "\r\n"


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts and the bytes it reads."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send bytes to the proxy and read until it closes or goes quiet (bounded in time and size)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got and (b"+PONG" in got or b"HTTP/1.1 200" not in got):
                    # An answer to the CONNECT other than 200: nothing more will come that matters.
                    break
        except TimeoutError:
            pass
    return got


def rules(tmp_path: Path, fake: FakeProvider, gateway: str, extra_apps: str = "") -> Path:
    return write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "injected-demo-key-0123456789"}}
            methods:
              hello: {{method: GET, path: /hello}}
        """,
        "apps.yaml": f"""
            apps:
              app: {{secret: {SECRET}}}
              empty: {{secret: "${{EMPTY_SECRET:-}}"}}
            {extra_apps}
            gateway: {gateway}
        """,
    })


def test_unidentified_connect_gets_407_and_no_byte_reaches_redis(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                                  redis_server: RedisServer, gateways: list) -> None:
    gw = Gateway(rules(tmp_path, fake, "{require_app: true, unknown_hosts: deny}"), confdir).start()
    gateways.append(gw)
    target = f"127.0.0.1:{redis_server.port}"
    got = raw_exchange(gw.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nPING\r\n".encode())
    assert got.startswith(b"HTTP/1.1 407"), got[:200]
    assert b"proxy-authenticate: basic" in got.lower()
    assert b"+PONG" not in got
    # The same with the shipped default (unknown_hosts: allow) and an app's own credentials: refused too.
    gw2 = Gateway(rules(tmp_path / "b", fake, "{require_app: true}"), confdir, redis=redis_server.url).start()
    gateways.append(gw2)
    for g in (gw, gw2):
        got = raw_exchange(g.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{AUTH}\r\nPING\r\n".encode())
        assert got.startswith(b"HTTP/1.1 403"), got[:200]
        assert b"+PONG" not in got and b"-2003" in got
    # The gateway's own admin port through the proxy: refused as well.
    admin = f"127.0.0.1:{gw2.admin_port}"
    got = raw_exchange(gw2.port, f"GET http://{admin}/status HTTP/1.1\r\nHost: {admin}\r\n{AUTH}\r\n".encode())
    assert got.startswith(b"HTTP/1.1 403"), got[:200]
    # Every refused CONNECT is logged like a call, saying why.
    wait_until(lambda: len(gw.log_lines()) >= 2, 5, what="a log line for each refused CONNECT")
    assert {r["status"] for r in gw.log_lines()[:2]} == {407, 403}
    # An app whose secret is empty is disabled: its empty password identifies no one.
    r = requests.get("http://api.demo.test/hello", proxies=gw.proxies("empty", ""), timeout=5)
    assert r.status_code == 407 and r.json()["code"] == -2001
    status = requests.get(f"{gw.admin}/status", timeout=5).json()
    assert "empty" in str(status) and "secret is empty" in str(status)


SPELLINGS = ["127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]", "localhost", "127.0.0.1", "0177.0.0.1"]


def test_every_spelling_of_loopback_is_refused_and_nothing_connects(tmp_path: Path, confdir: Path,
                                                                    fake: FakeProvider, gateways: list) -> None:
    listener = CountingListener()
    try:
        gw = Gateway(rules(tmp_path, fake, "{require_app: true, unknown_hosts: allow}"), confdir).start()
        gateways.append(gw)
        proxies = gw.proxies("app", SECRET)
        for host in SPELLINGS:
            r = requests.get(f"http://{host}:{listener.port}/x", proxies=proxies, timeout=5)
            assert r.status_code == 403 and r.json()["code"] == -2003, (host, r.text)
            got = raw_exchange(gw.port, f"CONNECT {host}:{listener.port} HTTP/1.1\r\nHost: {host}\r\n{AUTH}\r\n"
                               "hello\r\n".encode())
            assert got.startswith(b"HTTP/1.1 403"), (host, got[:200])
        # The metadata address and a private network, through a tunnel and plain.
        for host in ("169.254.169.254", "10.0.0.1", "100.64.0.1", "[fd00::1]"):
            r = requests.get(f"http://{host}/latest/meta-data/", proxies=proxies, timeout=5)
            assert r.status_code == 403, (host, r.text)
        assert listener.accepted == 0
        line = gw.log_for(r.json()["request_id"])
        assert "private address" in line.get("error", "")
    finally:
        listener.close()


def test_allow_cidrs_reopen_loopback_but_never_the_gateway_itself(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                                   redis_server: RedisServer, gateways: list) -> None:
    other = FakeProvider()
    try:
        other.on("GET", "/open", Reply(200, {"ok": True}))
        gw = Gateway(rules(tmp_path, fake, "{require_app: true, egress: {allow_cidrs: [127.0.0.0/8]}}",
                           extra_apps="  narrow: {secret: narrow-secret, passthrough: [localhost]}"),
                     confdir, redis=redis_server.url).start()
        gateways.append(gw)
        proxies = gw.proxies("app", SECRET)
        r = requests.get(f"{other.url}/open", proxies=proxies, timeout=5)
        assert r.status_code == 200 and r.json() == {"ok": True}
        # Two requests in one tunnel: the pinned connection keeps serving the host it was named by.
        target = f"localhost:{other.port}"
        get = f"GET /open HTTP/1.1\r\nHost: {target}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{AUTH}\r\n{get}".encode())
            wait_until(lambda: len(other.hits("/open")) == 2, 5, what="the first request in the tunnel")
            s.sendall(get.encode())
            wait_until(lambda: len(other.hits("/open")) == 3, 5, what="the second request in the tunnel")
        # Raw TCP into a tunnel to a service's host goes nowhere: only the gateway's calls go there.
        got = raw_exchange(gw.port, f"CONNECT api.demo.test:{redis_server.port} HTTP/1.1\r\n{AUTH}\r\n"
                           "PING\r\n".encode())
        assert b"+PONG" not in got
        other.seen.clear()
        for port in (gw.admin_port, gw.port, redis_server.port):
            r = requests.get(f"http://127.0.0.1:{port}/status", proxies=proxies, timeout=5)
            assert r.status_code == 403 and r.json()["code"] == -2003, (port, r.text)
            got = raw_exchange(gw.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{AUTH}\r\nPING\r\n".encode())
            assert got.startswith(b"HTTP/1.1 403") and b"+PONG" not in got, (port, got[:200])
        # A service's upstream by another spelling is never a way around the service's policy.
        fake.on("GET", "/hello", Reply(200, {"hi": 1}))
        port = fake.url.rsplit(":", 1)[1]
        for host in ("127.1", "2130706433", "localhost"):
            r = requests.get(f"http://{host}:{port}/hello", proxies=proxies, timeout=5)
            assert r.status_code == 403 and r.json()["code"] == -2003, (host, r.text)
        # A Host header other than the URL's: the call is the service's, or refused; never native.
        r = requests.get(f"http://127.0.0.1:{port}/hello", headers={"Host": "api.demo.test"}, proxies=proxies,
                         timeout=5)
        assert r.json()["code"] == 0 and fake.hits("/hello")[-1].headers["x-api-key"] == "injected-demo-key-0123456789"
        r = requests.get("http://api.demo.test/hello", headers={"Host": "elsewhere.test"}, proxies=proxies, timeout=5)
        assert r.status_code == 403 and "Host header" in r.json()["message"]
        r = requests.get(f"http://localhost:{other.port}/open", headers={"Host": "elsewhere.test"}, proxies=proxies,
                         timeout=5)
        assert r.status_code == 403 and "Host header" in r.json()["message"]
        assert len(fake.hits("/hello")) == 1
        # passthrough: the narrow app reaches only the hosts it lists.
        narrow = gw.proxies("narrow", "narrow-secret")
        assert requests.get(f"http://localhost:{other.port}/open", proxies=narrow, timeout=5).status_code == 200
        r = requests.get(f"{other.url}/open", proxies=narrow, timeout=5)
        assert r.status_code == 403 and "passthrough" in r.json()["message"]
        got = raw_exchange(gw.port, f"CONNECT 127.0.0.1:{other.port} HTTP/1.1\r\nProxy-Authorization: Basic "
                           f"{base64.b64encode(b'narrow:narrow-secret').decode()}\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 403")
        assert len(other.hits("/open")) == 1
    finally:
        other.close()


STATIC_KEY = "static-key-the-app-never-sees-4711"
OAUTH_TOKEN = "oauth-token-fetched-by-gateway-0815"


def echo(seen: object) -> Reply:
    headers = seen.headers  # type: ignore[attr-defined]
    return Reply(200, {"you_sent": {"key": headers.get("x-api-key"), "auth": headers.get("authorization")}},
                 {"X-Echo-Key": headers.get("x-api-key") or headers.get("authorization") or ""})


def test_a_provider_echoing_injected_secrets_never_hands_them_on(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                                  gateways: list) -> None:
    from mitmproxy.io import FlowReader

    fake.on("POST", "/oauth/token", Reply(200, {"access_token": OAUTH_TOKEN, "token_type": "Bearer",
                                                "expires_in": 3600}))
    fake.on("GET", "/echo", echo)
    # The same echo, gzip-encoded: a raw answer keeps its encoding, and is looked into all the same.
    fake.on("GET", "/echo-gzip", lambda seen: Reply(200, gzip.compress(json.dumps(
        {"key": seen.headers.get("x-api-key")}).encode()), {"Content-Type": "application/json",
                                                             "Content-Encoding": "gzip"}))
    directory = write_rules(tmp_path / "rules", {
        "keyed.yaml": f"""
            service: keyed
            hosts: [keyed.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: {STATIC_KEY}}}
            methods: {{echo: {{method: GET, path: /echo}}, gz: {{method: GET, path: /echo-gzip}}}}
        """,
        "oauth.yaml": f"""
            service: oauth
            hosts: [oauth.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: oauth2_client_credentials, token_url: "{fake.url}/oauth/token",
                          client_id: cid, client_secret: client-secret-xyz-123}}
            methods: {{echo: {{method: GET, path: /echo}}}}
        """,
        "apps.yaml": f"""
            apps:
              app: {{secret: {SECRET}}}
            gateway: {{require_app: true}}
        """,
    })
    flows = tmp_path / "flows.mitm"
    gw = Gateway(directory, confdir, args=["-w", str(flows)]).start()
    gateways.append(gw)
    proxies = gw.proxies("app", SECRET)
    answers = []
    for host in ("keyed.test", "oauth.test"):
        for mode in ("unified", "raw"):
            r = requests.get(f"http://{host}/echo", headers={"X-Gateway-Envelope": mode}, proxies=proxies, timeout=5)
            assert r.status_code == 200, r.text
            answers.append(r.text + str(r.headers))
    gz = requests.get("http://keyed.test/echo-gzip", headers={"X-Gateway-Envelope": "raw"}, proxies=proxies,
                      timeout=5)
    assert gz.status_code == 200 and gz.json() == {"key": "***"}  # requests decoded the gzip it got
    # The provider did receive them (the echo is real), the caller got none.
    assert fake.hits("/echo")[0].headers["x-api-key"] == STATIC_KEY
    assert fake.hits("/echo")[2].headers["authorization"] == f"Bearer {OAUTH_TOKEN}"
    for text in answers:
        assert STATIC_KEY not in text and OAUTH_TOKEN not in text, text
        assert "***" in text
    gw.stop()
    with flows.open("rb") as f:
        stored = list(FlowReader(f).stream())
    assert len(stored) == 5
    for flow in stored:
        dumped = repr(flow.get_state())
        assert STATIC_KEY not in dumped and OAUTH_TOKEN not in dumped
        assert flow.response is not None and b"***" in (flow.response.content or b"")
    raw_file = flows.read_bytes()
    assert STATIC_KEY.encode() not in raw_file and OAUTH_TOKEN.encode() not in raw_file


def test_a_reload_adding_a_redact_rule_masks_the_very_next_message(tmp_path: Path, confdir: Path,
                                                                   fake: FakeProvider, gateways: list) -> None:
    import signal

    fake.on("GET", "/order", Reply(200, {"status": "1", "info": "order ORD-778899 was refused"}))
    service = f"""
        service: shop
        hosts: [shop.test]
        upstream: {{url: "{fake.url}", timeout: 2s}}
        envelope: {{type: json, success_field: status, success_values: ["0"], message_field: info,
                   codes: {{"1": -2005}}}}
        methods: {{order: {{method: GET, path: /order}}}}
    """
    apps = f"apps:\n  app: {{secret: {SECRET}}}\ngateway: {{require_app: true{{extra}}}}\n"
    directory = write_rules(tmp_path / "rules", {"shop.yaml": service, "apps.yaml": apps.replace("{extra}", "")})
    gw = Gateway(directory, confdir).start()
    gateways.append(gw)
    proxies = gw.proxies("app", SECRET)
    before = requests.get("http://shop.test/order", proxies=proxies, timeout=5).json()
    assert "ORD-778899" in before["message"]
    reloaded_at = requests.get(f"{gw.admin}/status", timeout=5).json()["rules"]["last_reload_at"]
    rule = ', redact: [{pattern: "ORD-\\\\d+", replace: "ORD-#"}]'
    (directory / "apps.yaml").write_text(apps.replace("{extra}", rule))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: requests.get(f"{gw.admin}/status", timeout=5).json()["rules"]["last_reload_at"] != reloaded_at,
               5, what="the reload")
    after = requests.get("http://shop.test/order", proxies=proxies, timeout=5).json()
    assert "ORD-778899" not in after["message"] and "ORD-#" in after["message"], after
    assert "ORD-778899" not in gw.log_for(after["request_id"]).get("message", "")
