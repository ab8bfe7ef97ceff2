"""Hostile input through a real gateway (SPEC 18): what a user notices while an attacker tries.

Each test measures the gateway's memory from /proc, another caller's latency during the attack,
the answer's code, and that the rules in force stay. Sizes and times are kept small: every attack
is bounded in bytes, sockets and seconds."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

APP, SECRET = "app1", "s3cret-app1"
MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Watcher:
    """While an attack runs: the gateway's peak RSS (sampled every 20 ms), and the latency of another
    caller's call made every 50 ms."""

    def __init__(self, gw: Gateway, url: str) -> None:
        assert gw.proc is not None
        self.gw, self.url, self.pid = gw, url, gw.proc.pid
        self.before = rss_mb(self.pid)
        self.peak = self.before
        self.latencies: list[float] = []
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._call, daemon=True)]

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def _call(self) -> None:
        session = requests.Session()
        session.trust_env = False
        while not self._stop.wait(0.05):
            start = time.monotonic()
            try:
                r = session.get(self.url, proxies=self.gw.proxies(APP, SECRET), timeout=10)
                self.codes.append(int(r.json()["code"]))
            except Exception:
                self.codes.append(-1)
            self.latencies.append(time.monotonic() - start)

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # An attack refused within milliseconds may end before the other caller's first call: wait
        # for at least one, so the latency and code assertions always have something to judge.
        deadline = time.monotonic() + 15
        while not self.codes and time.monotonic() < deadline and self._threads[1].is_alive():
            time.sleep(0.01)
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    @property
    def growth(self) -> float:
        return self.peak - self.before

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def report(self, what: str) -> str:
        return (f"{what}: RSS {self.before:.0f} MB -> peak {self.peak:.0f} MB (+{self.growth:.0f}); other caller "
                f"{len(self.latencies)} calls, worst {self.worst * 1000:.0f} ms, codes {sorted(set(self.codes))}")


def read_answer(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1 answer from a raw socket: status, headers, body (by Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes the connection (EOF or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = requests.get(gw.admin + "/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def status(gw: Gateway) -> dict[str, Any]:
    return requests.get(gw.admin + "/status", timeout=5).json()


APPS = f"""
    apps:
      {APP}: {{secret: "{SECRET}"}}
    gateway: {{require_app: true, header_timeout: 500ms, client_idle: 1s}}
"""


def service(name: str, fake: FakeProvider, extra: str = "") -> str:
    return f"""
        service: {name}
        hosts: [{name}.test]
        upstream: {{url: "{fake.url}", timeout: 5s}}
        {extra}
    """


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, confdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    """One gateway for the module (each start costs seconds); every test leaves its rules as found."""
    fake.on("GET", "/ping", Reply(200, {"ok": 1}))
    rules = write_rules(tmp_path_factory.mktemp("hostile") / "rules", {
        "apps.yaml": APPS,
        "svc.yaml": service("svc", fake, "methods: {ping: {path: /ping}}"),
        "xml.yaml": service("xmlsvc", fake, "envelope: xml"),
        "raw.yaml": service("rawsvc", fake, "envelope: raw"),
    })
    gw = Gateway(rules, confdir).start()
    yield gw
    gw.stop()
    print("\n".join(line for line in gw.output().splitlines() if "client " not in line)[-4000:])


def ping(gw: Gateway) -> str:
    return "http://svc.test/ping"


# -- request bodies ------------------------------------------------------------------------------


def _chunked_upload(port: int, auth: str | None, total: int, out: dict[str, Any]) -> None:
    """A chunked POST of up to `total` bytes; records the answer and how much could be sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        head = "POST http://svc.test/upload HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n"
        if auth:
            head += f"Proxy-Authorization: {auth}\r\n"
        sock.sendall((head + "\r\n").encode())
        chunk = b"100000\r\n" + b"x" * MIB + b"\r\n"
        sent = 0
        sock.settimeout(5)
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += MIB
        except OSError:
            pass
        out["sent"] = sent
        try:
            out["answer"] = read_answer(sock)
        except (OSError, AssertionError) as exc:
            out["answer"] = exc
    finally:
        sock.close()


def test_bodies_of_unidentified_callers_are_not_read(gateway: Gateway) -> None:
    """Three chunked uploads of up to 200 MiB each with no credentials: each is answered 407 (-2001)
    from its headers and closed; the gateway's memory does not grow, another caller is served."""
    results: list[dict[str, Any]] = [{} for _ in range(3)]
    with Watcher(gateway, ping(gateway)) as watch:
        threads = [threading.Thread(target=_chunked_upload, args=(gateway.port, None, 200 * MIB, out))
                   for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    print(watch.report("3 x 200 MiB chunked, no credentials"), [r.get("sent", 0) // MIB for r in results])
    for out in results:
        assert out["sent"] < 200 * MIB, "the gateway kept reading an unidentified caller's body"
        answer = out["answer"]
        if isinstance(answer, tuple):  # the answer may be lost to the reset when the client keeps sending
            status_code, _, body = answer
            assert status_code == 407 and json.loads(body)["code"] == -2001
    assert watch.growth < 40, watch.report("unidentified uploads")
    assert watch.worst < 2.5 and set(watch.codes) == {0}, watch.report("unidentified uploads")


def test_chunked_service_body_over_64_mib_is_cut(gateway: Gateway) -> None:
    """An identified app's chunked upload to a service: measured while it is buffered, and the
    connection closed once it passes 64 MiB (413, -2005 in the log)."""
    auth = "Basic " + __import__("base64").b64encode(f"{APP}:{SECRET}".encode()).decode()
    out: dict[str, Any] = {}
    with Watcher(gateway, ping(gateway)) as watch:
        _chunked_upload(gateway.port, auth, 200 * MIB, out)
    print(watch.report("200 MiB chunked to a service, identified"), f"sent {out['sent'] // MIB} MiB")
    assert 64 * MIB < out["sent"] < 200 * MIB
    assert watch.growth < 200, watch.report("chunked service body")
    assert watch.worst < 2.5 and set(watch.codes) == {0}, watch.report("chunked service body")
    line = wait_until(lambda: next((r for r in gateway.log_lines() if r["status"] == 413
                                    and "chunked" in (r["error"] or "")), None), 5, what="the 413 in the log")
    assert line["code"] == -2005  # type: ignore[index]


def test_answer_from_headers_and_close(gateway: Gateway) -> None:
    """Read right after the headers: an unidentified caller's body gets its 407, a service call
    announcing more than 64 MiB its 413 (-2005), and both connections are closed."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST http://svc.test/upload HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        status_code, headers, body = read_answer(sock)
        assert status_code == 407 and json.loads(body)["code"] == -2001
        assert headers["proxy-authenticate"].startswith("Basic")
        assert closed_within(sock, 2)
    auth = "Basic " + __import__("base64").b64encode(f"{APP}:{SECRET}".encode()).decode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"POST http://svc.test/upload HTTP/1.1\r\nHost: svc.test\r\nProxy-Authorization: {auth}\r\n"
                     f"Content-Length: {100 * MIB}\r\n\r\n".encode())
        start = time.monotonic()
        status_code, headers, body = read_answer(sock)
        assert status_code == 413 and json.loads(body)["code"] == -2005
        assert closed_within(sock, 2) and time.monotonic() - start < 3
    line = wait_until(lambda: next((r for r in gateway.log_lines() if r["status"] == 413), None), 5,
                      what="the 413 in the access log")
    assert line["code"] == -2005  # type: ignore[index]


def tunnel(gateway: Gateway) -> ssl.SSLSocket:
    """An intercepted HTTPS tunnel to svc.test through the gateway, as the app (HTTP/1.1 inside)."""
    auth = "Basic " + __import__("base64").b64encode(f"{APP}:{SECRET}".encode()).decode()
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    raw.sendall(f"CONNECT svc.test:443 HTTP/1.1\r\nHost: svc.test:443\r\nProxy-Authorization: {auth}\r\n\r\n"
                .encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = raw.recv(4096)
        assert chunk, reply
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    context = ssl.create_default_context(cafile=gateway.ca)
    context.set_alpn_protocols(["http/1.1"])
    return context.wrap_socket(raw, server_hostname="svc.test")


def test_answer_from_headers_inside_an_https_tunnel(gateway: Gateway) -> None:
    """The same 413 inside an intercepted HTTPS tunnel: encrypted for the caller's TLS session and
    read by it, before the close, although no byte of the body was sent."""
    with tunnel(gateway) as tls:
        tls.sendall(f"POST /upload HTTP/1.1\r\nHost: svc.test\r\nContent-Length: {100 * MIB}\r\n\r\n".encode())
        status_code, headers, body = read_answer(tls)  # type: ignore[arg-type]
        assert status_code == 413 and json.loads(body)["code"] == -2005, body
        assert headers["connection"] == "close" and headers["x-gateway-code"] == "-2005"
        assert closed_within(tls, 2)  # type: ignore[arg-type]


def test_chunked_body_over_64_mib_in_a_tunnel_is_answered_413(gateway: Gateway) -> None:
    """A chunked body has no length to judge: once what was buffered passes 64 MiB the caller gets
    its 413 (-2005), through its TLS session, and the connection is closed. The caller sends
    exactly 64 MiB and then one byte, and reads: the limit is passed only by the last byte, so no
    byte of the caller's is left unread to turn the close into a reset."""
    with tunnel(gateway) as tls:
        tls.sendall(b"POST /upload HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"100000\r\n" + b"x" * MIB + b"\r\n"
        for _ in range(64):
            tls.sendall(chunk)
        tls.sendall(b"1\r\nx\r\n")
        status_code, headers, body = read_answer(tls, timeout=10)  # type: ignore[arg-type]
        assert status_code == 413 and json.loads(body)["code"] == -2005, body
        assert "64 MiB" in json.loads(body)["message"] and headers["connection"] == "close"
        assert closed_within(tls, 2)  # type: ignore[arg-type]


# -- provider answers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """256 MiB of zeros in about 250 KB of gzip."""
    compressor = __import__("zlib").compressobj(9, 8, 31)
    block = bytes(16 * MIB)
    return b"".join(compressor.compress(block) for _ in range(16)) + compressor.flush()


def test_gzip_bomb_is_refused_with_bounded_memory(gateway: Gateway, fake: FakeProvider, gzip_bomb: bytes) -> None:
    fake.on("GET", "/bomb", Reply(200, gzip_bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    with Watcher(gateway, ping(gateway)) as watch:
        start = time.monotonic()
        r = requests.get("http://svc.test/bomb", proxies=gateway.proxies(APP, SECRET), timeout=20)
        took = time.monotonic() - start
    print(watch.report(f"gzip bomb {len(gzip_bomb) // 1024} KiB -> 256 MiB"), f"answered in {took:.2f}s")
    assert r.json()["code"] == -1004
    assert "64 MiB" in gateway.log_for(r.json()["request_id"])["error"]
    assert watch.growth < 200, watch.report("gzip bomb")  # at most one 64 MiB decode buffer in flight
    assert watch.worst < 2.5 and set(watch.codes) == {0}, watch.report("gzip bomb")
    assert rss_mb(watch.pid) - watch.before < 120, "decoded bodies are not kept after the call"


def test_repeated_xml_elements_are_classified_in_linear_time(gateway: Gateway, fake: FakeProvider) -> None:
    body = b"<xml><return_code>SUCCESS</return_code>" + b"<item>x</item>" * 100_000 + b"</xml>"
    fake.on("GET", "/many", Reply(200, body, {"Content-Type": "text/xml"}))
    with Watcher(gateway, ping(gateway)) as watch:
        start = time.monotonic()
        r = requests.get("http://xmlsvc.test/many", proxies=gateway.proxies(APP, SECRET), timeout=20)
        took = time.monotonic() - start
    print(watch.report(f"XML with 100,000 repeated elements ({len(body) // 1024} KB)"), f"answered in {took:.2f}s")
    assert r.json()["code"] == 0 and len(r.json()["data"]["item"]) == 100_000
    assert took < 4.0  # was 6.2 s: quadratic in the repeated elements
    assert watch.worst < 2.5, watch.report("repeated XML")


def test_provider_oddities_are_not_the_gateways_fault(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("GET", "/huge-number", Reply(200, b'{"n": 1e999999, "m": -1e999999, "ok": 1.5}',
                                         {"Content-Type": "application/json"}))
    r = requests.get("http://svc.test/huge-number", proxies=gateway.proxies(APP, SECRET), timeout=10)
    # Strict JSON: the non-standard `Infinity` / `NaN` tokens would not parse in most languages.
    body = json.loads(r.content, parse_constant=lambda token: pytest.fail(f"{token} in the envelope"))
    assert "Infinity" not in r.text and body["code"] == 0 and body["data"]["ok"] == 1.5
    # `data` is the provider's body unchanged, so its bytes are spliced in: the numbers stay as the
    # provider wrote them (valid JSON); where the gateway parses a body they keep their text instead
    # (tests/test_hostile_units.py).
    assert b'"n": 1e999999' in r.content and b'"m": -1e999999' in r.content
    fake.on("GET", "/header", Reply(200, {"ok": 1}, {"X-Note": "café"}))  # sent as Latin-1 bytes
    r = requests.get("http://rawsvc.test/header", proxies=gateway.proxies(APP, SECRET), timeout=10)
    assert r.status_code == 200 and r.headers["X-Note"] == "café" and r.json() == {"ok": 1}


def test_identity_and_host_small_items(gateway: Gateway) -> None:
    proxies = {"http": f"http://127.0.0.1:{gateway.port}"}

    def signed(app: str, signature: str) -> requests.Response:
        headers = {"X-Gateway-App": app, "X-Gateway-Timestamp": str(int(time.time())),
                   "X-Gateway-Nonce": uuid.uuid4().hex, "X-Gateway-Signature": signature}
        return requests.get("http://svc.test/ping", proxies=proxies, headers=headers, timeout=10)

    r = signed(APP, "é" * 64)  # not ASCII: was a TypeError (-3002)
    assert r.status_code == 401 and r.json()["code"] == -2002
    wrong = signed(APP, "0" * 64).json()
    ghost = signed("no-such-app", "0" * 64).json()
    assert ghost["code"] == wrong["code"] == -2002
    assert ghost["message"] == wrong["message"], "the answer must not tell which app names exist"
    ts, nonce = str(int(time.time())), uuid.uuid4().hex
    text = "\n".join(["GET", "/ping", ts, nonce, hashlib.sha256(b"").hexdigest()])
    good = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    r = requests.get("http://svc.test/ping", proxies=proxies, timeout=10, headers={
        "X-Gateway-App": APP, "X-Gateway-Timestamp": ts, "X-Gateway-Nonce": nonce, "X-Gateway-Signature": good})
    assert r.json()["code"] == 0
    # The explicit host in upper case is still the explicit host.
    r = requests.get("http://GATEWAY.LOCAL/svc/ping", proxies=gateway.proxies(APP, SECRET), timeout=10)
    assert r.json()["code"] == 0 and r.json()["data"] == {"ok": 1}


# -- connections ---------------------------------------------------------------------------------


def test_slow_headers_and_idle_connections_are_closed(gateway: Gateway, fake: FakeProvider) -> None:
    """header_timeout 500ms, client_idle 1s (in the test's rules): slowloris sockets are closed,
    idle keep-alive sockets too, and a call slower than client_idle still completes."""
    slow = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(3)]
    started = time.monotonic()
    for sock in slow:
        sock.sendall(b"GET http://svc.test/ping HTTP/1.1\r\n")
    closed_at: list[float] = []
    deadline = started + 5
    while len(closed_at) < len(slow) and time.monotonic() < deadline:
        for sock in slow:
            if sock.fileno() == -1:
                continue
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line every 100 ms: never complete
                sock.settimeout(0.1)
                if sock.recv(1) == b"":
                    raise ConnectionResetError
            except TimeoutError:
                pass
            except OSError:
                closed_at.append(time.monotonic() - started)
                sock.close()
    print(f"slowloris: {len(slow)} sockets closed after {[round(t, 2) for t in closed_at]} s")
    assert len(closed_at) == 3 and max(closed_at) < 3.0

    auth = "Basic " + __import__("base64").b64encode(f"{APP}:{SECRET}".encode()).decode()
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(3)]
    for sock in idle:
        sock.sendall(f"GET http://svc.test/ping HTTP/1.1\r\nHost: svc.test\r\nProxy-Authorization: {auth}\r\n\r\n"
                     .encode())
        status_code, _, body = read_answer(sock)
        assert status_code == 200 and json.loads(body)["code"] == 0
    answered = time.monotonic()
    assert all(closed_within(sock, 4) for sock in idle)
    idle_for = time.monotonic() - answered
    print(f"idle keep-alive: 3 sockets closed after {idle_for:.2f} s")
    assert 0.8 < idle_for < 4.0
    for sock in idle:
        sock.close()

    fake.on("GET", "/slow", Reply(200, {"ok": 1}, delay=1.6))
    r = requests.get("http://svc.test/slow", proxies=gateway.proxies(APP, SECRET), timeout=10)
    assert r.json()["code"] == 0  # a call in flight is not idle


# -- rule files ----------------------------------------------------------------------------------


LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)])


def test_hostile_rule_files_are_problems_not_stalls(gateway: Gateway) -> None:
    rules = gateway.rules
    version = status(gateway)["rules"]["version"]
    (rules / "keys").mkdir()
    os.mkfifo(rules / "keys" / "fifo")
    cases = {
        "laughs.yaml": ("service: laughs\n" + LAUGHS + "\n", "document too large"),
        "fifo.yaml": ('service: fifo\nupstream: {url: "http://127.0.0.1:9", ca: "file:keys/fifo"}\n',
                      "not a regular file"),
        "zero.yaml": ('service: zero\nupstream: {url: "http://127.0.0.1:9", ca: "file:/dev/zero"}\n',
                      "outside the rules directory"),
        "twice.yaml": ('service: twice\nupstream: {url: "http://127.0.0.1:9"}\nmethods: {m: {path: "/{a}/{a}"}}\n',
                       "each {name} may appear once"),
        "nan.yaml": ('service: nan\nupstream: {url: "http://127.0.0.1:9", timeout: .nan}\n', "not a duration"),
    }
    for name, (text, expected) in cases.items():
        errors = metric(gateway, "gateway_rules_reloads_total", result="error")
        with Watcher(gateway, ping(gateway)) as watch:
            (rules / name).write_text(text)
            wait_until(lambda e=errors: metric(gateway, "gateway_rules_reloads_total", result="error") > e, 10,
                       what=f"the reload error for {name}")
        problems = status(gateway)
        shown = json.dumps(problems)
        assert f"{name}:" in shown and expected in shown, shown[:2000]
        print(watch.report(f"hot reload of {name}"))
        assert watch.worst < 2.5 and set(watch.codes) == {0}, watch.report(name)
        assert watch.growth < 60, watch.report(name)
        (rules / name).unlink()
    check = subprocess.run([sys.executable, "-m", "addons", "check", str(rules)], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0 and "Traceback" not in check.stderr
    assert status(gateway)["rules"]["version"] == version  # the rules in force never changed
