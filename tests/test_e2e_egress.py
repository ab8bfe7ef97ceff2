"""Egress control (SPEC 12) through a real mitmdump: what an app can reach, tried as an attacker would."""

from __future__ import annotations

import base64
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
        assert len(other.hits("/open")) == 1
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
        assert r.status_code == 403
        assert len(fake.hits("/hello")) == 1
        # passthrough: the narrow app reaches only the hosts it lists.
        narrow = gw.proxies("narrow", "narrow-secret")
        assert requests.get(f"http://localhost:{other.port}/open", proxies=narrow, timeout=5).status_code == 200
        r = requests.get(f"{other.url}/open", proxies=narrow, timeout=5)
        assert r.status_code == 403 and "passthrough" in r.json()["message"]
        got = raw_exchange(gw.port, f"CONNECT 127.0.0.1:{other.port} HTTP/1.1\r\nProxy-Authorization: Basic "
                           f"{base64.b64encode(b'narrow:narrow-secret').decode()}\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 403")
        assert len(other.hits("/open")) == 2
    finally:
        other.close()
