"""Gateway benchmark (SPEC 11). Run it through `bench/run.sh`, which installs the tools first.

    bench/run.sh [--duration S] [--rounds N] [--connections C] [--rows a,b,c] [--soak S] [--json FILE]

Everything runs on this machine, on 127.0.0.1 and free ports, and is stopped at exit:

- nginx (bench/nginx.conf): the upstream, one worker, a small JSON body over HTTP and TLS. It
  answers 403 unless the request carries the X-Api-Key the gateway is meant to inject, so every
  call checks the credential injection.
- rows (``--rows``, default all, in this order):

  ==========  =====  ==========================================================================
  direct      wrk    straight to nginx
  bare        wrk    through bare mitmdump (no addons, same options as the gateway otherwise)
  bare-lean   wrk    bare mitmdump on the gateway's lean addon set (bench/lean.py: LeanAddons only)
  gw-mem      wrk    through the gateway, in-memory state (``./run_proxy.sh``)
  gw-cached   wrk    the gw-mem gateway, a method with a ``cache:`` block: every call a hit
  gw-redis    wrk    through the gateway with its own redis-server on a free port
  gw-cluster  wrk    through the gateway on its own 3-master Redis Cluster (``redis+cluster://``)
  gw-workers  wrk    ``GATEWAY_WORKERS=2 GATEWAY_REDIS=...``: 2 mitmdump sharing the port
  gw-trace    wrk    gw-mem with tracing on (``GATEWAY_OTLP``) to a local OTLP sink (bench/otlp_sink.py)
  gw-full     wrk    the gateway (memory store) with every default mitmproxy addon (gateway_lean=false)
  gw-1k       wrk    the gateway (memory store) with 1,000 services of 4 methods loaded
  bare-100k   wrk    bare mitmdump, a 100 KB JSON answer (1,500 small objects)
  gw-100k     wrk    the gateway (memory store), the same 100 KB answer through the json envelope
  bare-https  hey    bare mitmdump, HTTPS through CONNECT (client trusts certs/ CA; upstream TLS)
  gw-https    hey    the gateway (memory store), HTTPS through CONNECT to bench.upstream.test
  ==========  =====  ==========================================================================

  Gateway rows run the full chain with bench/rules/: the client names the app on every request
  (``Proxy-Authorization: Basic bench:$BENCH_SECRET``), the service ``bench`` is matched by host
  (``bench.upstream.test``) and method (``bench.ping``), three quotas of 100000000/day apply
  (service, app on service, app), a static key is injected, the json envelope rewrites the answer,
  each call is written to an access log file and counted in /metrics (admin on a free port).
  Before measuring, each gateway is checked: 407 without credentials, 200 with code 0 with them.
  After measuring: the access log has a line per call, and neither secret appears in it.
- HTTP/1.1 keep-alive, ``--connections`` (default 16; ``--connections 50`` matches
  shared/notes/mitmproxy-findings.md section 7), one wrk thread.
- Noise control: ``--rounds`` rounds (default 3); in each, every gateway row is measured right
  beside its baseline (bare for HTTP, bare-https for HTTPS), the pair's order alternating by round,
  each measurement after a warm-up (``--warmup``, plus ``--first-warmup`` the first time). The
  table shows medians; "vs bare" is the median of the per-pair req/s ratios and "p99 added" the
  median of the per-pair p99 differences, so a machine that slows down between rounds cancels out.
- "cpu/call": the CPU time (user + system) the serving process (all of its process group: the
  workers row's workers) spent per call during the measured runs, read from /proc before and after
  each; the median over runs. A saturated proxy's cpu/call is about 1 / req/s; below saturation it
  is what a call costs, whatever the rate.
- ``--rate R``: every row with hey at a fixed total rate of R requests/s (``-q`` per connection)
  instead of as fast as possible, so the latency columns show what a proxy adds below saturation.
- ``--soak S``: after the rounds, a sustained load on one gateway (``--soak-row``, default gw-mem)
  for S seconds, sampling its resident memory (RSS); reports start, middle and end and the growth.
  Exits 1 when it grows by more than ``--soak-max-growth`` percent (default 10).

Results: the table on stdout and the same as JSON in ``bench/results/<UTC timestamp>.json`` (or
``--json FILE``). Exit status: 0; 1 if a row failed, a check failed or the soak grew; 77 if a tool
it needs is missing (run.sh installs them from Debian when it can).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFDIR = Path(os.environ.get("GATEWAY_CONFDIR") or ROOT / "certs")  # tests pass a scratch CA directory
CA_CERT = CONFDIR / "mitmproxy-ca-cert.pem"
BENCH_HOST = "bench.upstream.test"
BENCH_PATH = "/bench"
CACHED_PATH = "/cached"  # bench.cached: answered from the gateway's cache after the first call
APP = "bench"
EXIT_MISSING_TOOL = 77

ALL_ROWS = ["direct", "bare", "bare-lean", "gw-mem", "gw-cached", "gw-redis", "gw-cluster", "gw-workers",
            "gw-full", "gw-1k", "gw-trace", "bare-100k", "gw-100k", "bare-https", "gw-https"]
LABELS = {
    "direct": "direct to nginx",
    "bare": "bare mitmdump",
    "bare-lean": "bare mitmdump, lean addons",
    "gw-mem": "gateway, memory store",
    "gw-cached": "gateway, memory, cache hits",
    "gw-redis": "gateway, Redis",
    "gw-cluster": "gateway, Redis Cluster (3 masters)",
    "gw-workers": "gateway, 2 workers sharing the port, Redis",
    "gw-trace": "gateway, memory, traces to OTLP",
    "gw-full": "gateway, memory, all default addons",
    "gw-1k": "gateway, memory, 1,000 services",
    "bare-100k": "bare mitmdump, 100 KB JSON",
    "gw-100k": "gateway, memory, 100 KB JSON",
    "bare-https": "bare mitmdump, HTTPS CONNECT",
    "gw-https": "gateway, memory, HTTPS CONNECT",
}
# Each measured row is compared with this one; gateway rows are measured right beside it.
BASELINE = {"direct": "bare", "bare-lean": "bare", "gw-mem": "bare", "gw-cached": "bare", "gw-redis": "bare",
            "gw-cluster": "bare", "gw-workers": "bare", "gw-trace": "bare", "gw-full": "bare", "gw-1k": "bare",
            "gw-100k": "bare-100k", "gw-https": "bare-https"}
PAIRED = {"bare-lean", "gw-mem", "gw-cached", "gw-redis", "gw-cluster", "gw-workers", "gw-trace", "gw-full", "gw-1k",
          "gw-100k", "gw-https"}
# The process serving each row.
SERVER_OF = {"direct": "nginx", "bare": "bare", "bare-lean": "bare-lean", "bare-100k": "bare",
             "bare-https": "bare", "gw-mem": "gw-mem", "gw-cached": "gw-mem", "gw-redis": "gw-redis",
             "gw-cluster": "gw-cluster", "gw-workers": "gw-workers", "gw-trace": "gw-trace",
             "gw-full": "gw-full", "gw-1k": "gw-1k", "gw-100k": "gw-mem", "gw-https": "gw-mem"}
GATEWAYS = ("gw-mem", "gw-redis", "gw-cluster", "gw-workers", "gw-trace", "gw-full", "gw-1k")
REDIS_FREE = ("gw-mem", "gw-trace", "gw-full", "gw-1k")  # gateways on the memory store
BIG_PATH = "/big.json"
EXTRA_SERVICES = 999  # gw-1k: these beside the bench service, 4 methods each


class BenchError(Exception):
    """A row or a service could not be run; the message says why."""


class MissingTool(BenchError):
    pass


# ---------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(f"{tool} is not installed (bench/run.sh installs it from Debian when run as root)")
    return path


class Processes:
    """Everything the benchmark starts, each in its own session (process group), stopped together.

    The process-group ids also go to `<workdir>/pgids`, so run.sh's trap can stop whatever is left
    even if this interpreter is killed outright."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              log: Path | None = None, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        out: Any = subprocess.PIPE if stdout_pipe else (open(log, "ab") if log else subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT if log or stdout_pipe else subprocess.DEVNULL,
                                    start_new_session=True, cwd=ROOT)
        finally:
            if log and not stdout_pipe:
                out.close()
        self.running[name] = proc
        with open(self.workdir / "pgids", "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None:
            return
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.wait(5)
        # The group may outlive its leader (a shell's children): make sure it is gone.
        self._signal(proc, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop(name)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def wait_port(self, name: str, port: int, timeout: float, log: Path | None = None) -> None:
        proc = self.running[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with status {proc.returncode} before listening on {port}"
                                 + (f"; its output:\n{tail(log)}" if log else ""))
            if port_open(port):
                return
            time.sleep(0.1)
        raise BenchError(f"{name} did not listen on {port} within {timeout:.0f} s"
                         + (f"; its output:\n{tail(log)}" if log else ""))


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no output)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text) or "    (empty)"


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# the stack under test


@dataclass
class Gateway:
    name: str
    port: int
    admin_ports: list[int]
    log: Path
    output: Path
    requests_sent: int = 0
    checks: dict[str, Any] = field(default_factory=dict)


class Stack:
    """Starts nginx, redis-server, bare mitmdump and the gateways the selected rows need."""

    def __init__(self, procs: Processes, workdir: Path, bin_dir: Path, workers: int) -> None:
        self.procs = procs
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.workers = workers
        self.api_key = "bk-" + secrets.token_hex(12)
        self.app_secret = "bs-" + secrets.token_hex(12)
        self.http_port = 0
        self.tls_port = 0
        self.bare_port = 0
        self.bare_lean_port = 0
        self.redis_port = 0
        self.cluster_ports: list[int] = []
        self.otlp_port = 0
        self.gateways: dict[str, Gateway] = {}
        self.failed: dict[str, str] = {}  # server name -> why it is not available
        self.www: Path | None = None  # nginx's document root (the 100 KB answer)

    @property
    def proxy_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{APP}:{self.app_secret}".encode()).decode()

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, servers: set[str]) -> None:
        self._start_nginx()  # every row needs it: a failure here ends the run
        for name, starter in (("bare", self._start_bare), ("bare-lean", self._start_bare_lean),
                              ("redis", self._start_redis), ("cluster", self._start_cluster)):
            if name in servers:
                self._try(name, starter)
        if "gw-trace" in servers:
            self._try("otlp", self._start_otlp_sink)
        for name in GATEWAYS:
            if name not in servers:
                continue
            if name == "gw-trace" and "otlp" in self.failed:
                self.failed[name] = f"OTLP sink: {self.failed['otlp']}"
                continue
            store = "cluster" if name == "gw-cluster" else "redis"
            if name not in REDIS_FREE and store in self.failed:
                self.failed[name] = f"redis-server: {self.failed[store]}"
                continue
            self._try(name, lambda name=name: self._start_gateway(name))

    def _try(self, name: str, starter: Any) -> None:
        try:
            starter()
        except MissingTool as exc:
            self.failed[name] = str(exc)
        except (BenchError, OSError) as exc:
            self.failed[name] = str(exc) or repr(exc)
            self.procs.stop(name)

    def _start_nginx(self) -> None:
        nginx = need("nginx")
        self.http_port, self.tls_port = free_port(), free_port()
        write_self_signed(self.workdir / "upstream-cert.pem", self.workdir / "upstream-key.pem")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = (HERE / "nginx.conf").read_text()
        # nginx's worker drops to an unprivileged user when started as root, and the scratch
        # directory (or one of its parents) may be private: the 100 KB answer lives in /tmp.
        self.www = Path(tempfile.mkdtemp(prefix="gw-bench-www-", dir="/tmp"))
        os.chmod(self.www, 0o755)
        (self.www / BIG_PATH.lstrip("/")).write_bytes(big_json())
        os.chmod(self.www / BIG_PATH.lstrip("/"), 0o644)
        for key, value in {"DIR": str(self.workdir), "WWW": str(self.www), "HTTP_PORT": str(self.http_port),
                           "TLS_PORT": str(self.tls_port), "API_KEY": self.api_key}.items():
            conf = conf.replace(f"@{key}@", value)
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        log = self.workdir / "nginx.out"
        self.procs.start("nginx", [nginx, "-p", str(self.workdir), "-c", str(path),
                                   "-e", str(self.workdir / "nginx-error.log"), "-g", "daemon off;"], log=log)
        self.procs.wait_port("nginx", self.http_port, 15, log)
        self.procs.wait_port("nginx", self.tls_port, 5, log)
        status, body = http_get(self.http_port, BENCH_PATH, f"127.0.0.1:{self.http_port}",
                                {"X-Api-Key": self.api_key})
        if status != 200:
            raise BenchError(f"nginx answered {status} {body[:200]!r}")

    def _start_redis(self) -> None:
        redis = need("redis-server")
        self.redis_port = free_port()
        log = self.workdir / "redis.out"
        self.procs.start("redis", [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(self.workdir)], log=log)
        self.procs.wait_port("redis", self.redis_port, 15, log)

    def _start_cluster(self) -> None:
        """Three masters on free ports, all slots assigned by `redis-cli --cluster create`."""
        redis, cli = need("redis-server"), need("redis-cli")
        self.cluster_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(self.cluster_ports):
            node = self.workdir / f"cluster{i}"
            node.mkdir(exist_ok=True)
            log = self.workdir / f"cluster{i}.out"
            self.procs.start(f"cluster{i}", [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no", "--dir", str(node), "--cluster-enabled", "yes",
                                             "--cluster-port", str(free_port())], log=log)
            self.procs.wait_port(f"cluster{i}", port, 15, log)
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.cluster_ports),
                                 "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=60)
        if create.returncode != 0:
            raise BenchError(f"redis-cli --cluster create failed: {create.stdout[-300:]!r}")
        deadline = time.monotonic() + 30
        for port in self.cluster_ports:
            while b"cluster_state:ok" not in subprocess.run([cli, "-p", str(port), "CLUSTER", "INFO"],
                                                            capture_output=True, timeout=10).stdout:
                if time.monotonic() > deadline:
                    raise BenchError(f"cluster node {port} never reached cluster_state:ok")
                time.sleep(0.1)

    def _start_otlp_sink(self) -> None:
        self.otlp_port = free_port()
        log = self.workdir / "otlp.out"
        self.procs.start("otlp", [sys.executable, str(HERE / "otlp_sink.py"), str(self.otlp_port)], log=log)
        self.procs.wait_port("otlp", self.otlp_port, 15, log)

    def otlp_received(self) -> dict[str, int] | None:
        try:
            status, body = http_get(self.otlp_port, "/count", f"127.0.0.1:{self.otlp_port}", {})
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def _mitm_common(self) -> list[str]:
        # The options run_proxy.sh gives the gateway, less the chain itself.
        return ["--set", f"confdir={CONFDIR}", "--set", "connection_strategy=lazy",
                "--set", "stream_large_bodies=1m", "--set", "flow_detail=0",
                "--set", "termlog_verbosity=warn"]

    def _start_bare(self, name: str = "bare", extra: tuple[str, ...] = ()) -> int:
        mitmdump = self.bin_dir / "mitmdump"
        if not mitmdump.exists():
            raise MissingTool(f"{mitmdump} does not exist")
        port = free_port()
        if name == "bare":
            self.bare_port = port
        log = self.workdir / f"{name}.out"
        # ssl_insecure: the bare-https row's upstream is nginx with a self-signed certificate.
        self.procs.start(name, [str(mitmdump), "--listen-host", "127.0.0.1", "--listen-port",
                                str(port), *self._mitm_common(), "--set", "ssl_insecure=true", *extra],
                         log=log)
        self.procs.wait_port(name, port, 60, log)
        url = f"http://127.0.0.1:{self.http_port}{BENCH_PATH}"
        status, body = http_get(port, url, f"127.0.0.1:{self.http_port}", {"X-Api-Key": self.api_key})
        if status != 200:
            raise BenchError(f"{name} answered {status} {body[:200]!r}")
        return port

    def _start_bare_lean(self) -> None:
        self.bare_lean_port = self._start_bare("bare-lean", ("-s", str(HERE / "lean.py")))

    def _start_gateway(self, name: str) -> None:
        if not (ROOT / "addons" / "gateway.py").exists():
            raise BenchError("addons/gateway.py does not exist yet")
        port = free_port()
        n = self.workers if name == "gw-workers" else 1
        admin = free_port_block(n)
        log, out = self.workdir / f"{name}.access.log", self.workdir / f"{name}.out"
        rules = write_many_services(self.workdir / "rules-1k", EXTRA_SERVICES) if name == "gw-1k" else HERE / "rules"
        env = dict(os.environ,
                   GATEWAY_LISTEN=f"127.0.0.1:{port}",
                   GATEWAY_RULES=str(rules),
                   GATEWAY_ADMIN=f"127.0.0.1:{admin[0]}",
                   GATEWAY_LOG=str(log),
                   GATEWAY_WORKERS=str(n),
                   BENCH_UPSTREAM=self.upstream, BENCH_KEY=self.api_key, BENCH_SECRET=self.app_secret)
        env.pop("GATEWAY_RULES_URL", None)
        env.pop("GATEWAY_UI", None)
        env.pop("GATEWAY_OTLP", None)
        if name == "gw-trace":
            env["GATEWAY_OTLP"] = f"http://127.0.0.1:{self.otlp_port}"
        if name in REDIS_FREE:
            env.pop("GATEWAY_REDIS", None)
        elif name == "gw-cluster":
            env["GATEWAY_REDIS"] = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.cluster_ports)
        else:
            env["GATEWAY_REDIS"] = f"redis://127.0.0.1:{self.redis_port}/{1 if name == 'gw-workers' else 0}"
        extra = ["--set", "gateway_lean=false"] if name == "gw-full" else []
        started = time.monotonic()
        self.procs.start(name, [str(ROOT / "run_proxy.sh"), "--set", "termlog_verbosity=warn", *extra],
                         env=env, log=out)
        # The first start of run_proxy.sh may still install the project into .venv.
        self.procs.wait_port(name, port, 300, out)
        gw = Gateway(name, port, admin, log, out)
        gw.checks["ready_s"] = round(time.monotonic() - started, 2)
        self.gateways[name] = gw
        self._check_gateway(gw)

    def _check_gateway(self, gw: Gateway) -> None:
        url = f"http://{BENCH_HOST}{BENCH_PATH}"
        deadline = time.monotonic() + 30
        while True:  # the port may be open before every worker serves
            try:
                status, body = http_get(gw.port, url, BENCH_HOST, {})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if status != 407:
            raise BenchError(f"{gw.name}: a call without app credentials got {status}, not 407: {body[:200]!r}")
        for _ in range(2 * max(1, len(gw.admin_ports))):  # reach each worker (the kernel spreads connections)
            status, body = http_get(gw.port, url, BENCH_HOST, {"Proxy-Authorization": self.proxy_auth})
            gw.requests_sent += 1
            check_envelope(gw.name, status, body)
        if not gw.log.exists() or gw.log.stat().st_size == 0:
            time.sleep(1)  # a buffered log writer may flush late
        gw.checks["first_calls_logged"] = gw.log.exists() and gw.log.stat().st_size > 0

    def check_https(self, gw: Gateway) -> None:
        if not CA_CERT.exists():
            raise BenchError(f"{CA_CERT} does not exist (mitmproxy creates it at its first start)")
        ctx = ssl.create_default_context(cafile=str(CA_CERT))
        conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=15)
        conn.set_tunnel(BENCH_HOST, 443, headers={"Proxy-Authorization": self.proxy_auth})
        try:
            conn.request("GET", BENCH_PATH, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            check_envelope("gw-https", resp.status, resp.read())
            gw.requests_sent += 1
        finally:
            conn.close()


def big_json() -> bytes:
    """The 100 KB answer: an object holding 1,500 small objects, as a list API returns them."""
    items = [{"id": i, "name": f"item-{i:04d}", "price": round(i * 1.25, 2), "active": i % 3 != 0}
             for i in range(1500)]
    return json.dumps({"ok": True, "total": len(items), "items": items}).encode()


def write_many_services(directory: Path, count: int) -> Path:
    """bench/rules plus `count` more services (4 methods each) on hosts no call uses."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in (HERE / "rules").glob("*.yaml"):
        shutil.copy(source, directory / source.name)
    for i in range(count):
        (directory / f"svc{i:04d}.yaml").write_text(
            f"service: svc{i:04d}\nhosts: [svc{i:04d}.upstream.test]\nupstream:\n"
            '  url: "${BENCH_UPSTREAM}"\n  timeout: 5s\n'
            'credentials:\n  type: static\n  header: X-Api-Key\n  value: "${BENCH_KEY}"\n'
            "envelope: json\nmethods:\n"
            + "".join(f"  m{j}:\n    method: GET\n    path: /svc{i:04d}/m{j}\n" for j in range(4)))
    return directory


def free_port_block(n: int) -> list[int]:
    """n consecutive free ports (admin listeners: worker i gets base + i)."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return [base + i for i in range(n)]
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError(f"no block of {n} free ports found")


def http_get(port: int, target: str, host: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", target, headers={"Host": host, "Accept": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_envelope(name: str, status: int, body: bytes) -> None:
    try:
        doc = json.loads(body)
    except ValueError:
        raise BenchError(f"{name}: answer {status} is not JSON: {body[:200]!r}") from None
    if status != 200 or not isinstance(doc, dict) or doc.get("code") != 0 or doc.get("data", {}).get("ok") is not True:
        raise BenchError(f"{name}: expected 200 with code 0 and the upstream's data, got {status}: {body[:300]!r}")


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------------------------------------
# load generators


@dataclass
class Measurement:
    row: str
    round: int
    pair: int | None
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and timeouts
    non2xx: int
    cpu_us: float | None = None  # the serving process's CPU time per call, microseconds


@dataclass
class Load:
    """How one row is loaded."""

    tool: str  # wrk | hey
    port: int  # where the client connects (upstream or proxy)
    env: dict[str, str] = field(default_factory=dict)  # wrk: abs.lua's settings
    url: str = ""  # hey: the request URL
    proxy: str = ""  # hey: -x
    headers: list[str] = field(default_factory=list)  # hey: -H


def load_for(row: str, stack: Stack) -> Load:
    up = f"127.0.0.1:{stack.http_port}"
    if row == "direct":
        return Load("wrk", stack.http_port,
                    {"BENCH_PATH": BENCH_PATH, "BENCH_HOST": up, "BENCH_API_KEY": stack.api_key})
    if row in ("bare", "bare-lean", "bare-100k"):
        port = stack.bare_lean_port if row == "bare-lean" else stack.bare_port
        path = BIG_PATH if row == "bare-100k" else BENCH_PATH
        return Load("wrk", port, {"BENCH_PATH": f"http://{up}{path}", "BENCH_HOST": up,
                                  "BENCH_API_KEY": stack.api_key})
    if row == "bare-https":
        return Load("hey", stack.bare_port, url=f"https://127.0.0.1:{stack.tls_port}{BENCH_PATH}",
                    proxy=f"http://127.0.0.1:{stack.bare_port}", headers=[f"X-Api-Key: {stack.api_key}"])
    gw = stack.gateways[SERVER_OF[row]]
    if row == "gw-https":
        return Load("hey", gw.port, url=f"https://{BENCH_HOST}{BENCH_PATH}",
                    proxy=f"http://{APP}:{stack.app_secret}@127.0.0.1:{gw.port}")
    path = CACHED_PATH if row == "gw-cached" else BIG_PATH if row == "gw-100k" else BENCH_PATH
    return Load("wrk", gw.port, {"BENCH_PATH": f"http://{BENCH_HOST}{path}", "BENCH_HOST": BENCH_HOST,
                                 "BENCH_AUTH": stack.proxy_auth})


def at_rate(load: Load, rate: int) -> Load:
    """The same calls from hey at a fixed total rate: latency below saturation, where "p99 added" means
    what the gateway adds to a call, not how long calls queue behind each other (wrk has no rate)."""
    if load.tool == "hey":
        return load
    path = load.env["BENCH_PATH"]
    headers = [f"X-Api-Key: {load.env['BENCH_API_KEY']}"] if load.env.get("BENCH_API_KEY") else []
    if load.env.get("BENCH_AUTH"):
        headers.append(f"Proxy-Authorization: {load.env['BENCH_AUTH']}")
    if path.startswith("http"):
        return Load("hey", load.port, url=path, proxy=f"http://127.0.0.1:{load.port}", headers=headers)
    return Load("hey", load.port, url=f"http://127.0.0.1:{load.port}{path}", headers=headers)


def run_load(procs: Processes, load: Load, seconds: int, connections: int, rate: int = 0) -> dict[str, float]:
    """One run of the load generator; returns requests, rps, p50_ms, p99_ms, errors, non2xx, seconds.
    `rate` > 0: a fixed total rate of requests per second, spread over the connections (hey -q)."""
    if rate:
        load = at_rate(load, rate)
    if load.tool == "wrk":
        argv = [need("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                "-s", str(HERE / "abs.lua"), f"http://127.0.0.1:{load.port}/"]
        env = dict(os.environ, **load.env)
    else:
        argv = [need("hey"), "-z", f"{seconds}s", "-c", str(connections), "-t", "10"]
        if load.proxy:
            argv += ["-x", load.proxy]
        if rate:
            argv += ["-q", str(max(1, rate // connections))]
        for header in load.headers:
            argv += ["-H", header]
        argv.append(load.url)
        env = dict(os.environ, SSL_CERT_FILE=str(CA_CERT))
    proc = procs.start("load", argv, env=env, stdout_pipe=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{load.tool} did not finish") from None
    finally:
        procs.stop("load")
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{load.tool} exited with {proc.returncode}: {text[-500:]}")
    return parse_wrk(text) if load.tool == "wrk" else parse_hey(text)


def parse_wrk(text: str) -> dict[str, float]:
    match = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.M)
    if not match:
        raise BenchError(f"wrk printed no result: {text[-500:]}")
    r = json.loads(match.group(1))
    seconds = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": seconds, "rps": r["requests"] / seconds if seconds else 0.0,
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "errors": r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
            "non2xx": r["status_errors"]}


def parse_hey(text: str) -> dict[str, float]:
    def number(pattern: str) -> float:
        match = re.search(pattern, text, re.M)
        if not match:
            raise BenchError(f"hey output lacks {pattern!r}: {text[-500:]}")
        return float(match.group(1))

    statuses = {int(code): int(count) for code, count in re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", text, re.M)}
    errors_block = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors_block, re.M))
    requests = sum(statuses.values())
    return {"requests": requests, "seconds": number(r"Total:\s+([\d.]+) secs"),
            "rps": number(r"Requests/sec:\s+([\d.]+)"),
            "p50_ms": number(r"50%+ in ([\d.]+) secs") * 1000, "p99_ms": number(r"99%+ in ([\d.]+) secs") * 1000,
            "errors": errors, "non2xx": sum(n for code, n in statuses.items() if not 200 <= code < 300)}


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Row:
    name: str
    label: str
    tool: str
    baseline: str | None
    runs: list[Measurement] = field(default_factory=list)
    error: str | None = None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio_vs_baseline: float | None = None
    p99_added_ms: float | None = None
    cpu_us: float | None = None  # median CPU time of the serving process per call, microseconds

    def summarize(self, rows: dict[str, Row]) -> None:
        if not self.runs:
            return
        self.rps = statistics.median(m.rps for m in self.runs)
        self.p50_ms = statistics.median(m.p50_ms for m in self.runs)
        self.p99_ms = statistics.median(m.p99_ms for m in self.runs)
        cpu = [m.cpu_us for m in self.runs if m.cpu_us is not None]
        self.cpu_us = statistics.median(cpu) if cpu else None
        if self.name in BASELINE.values():
            self.ratio_vs_baseline, self.p99_added_ms = 1.0, 0.0
        base = rows.get(self.baseline or "")
        if self.baseline is None or base is None or not base.runs:
            return
        if self.name in PAIRED:
            by_pair = {(m.round, m.pair): m for m in base.runs}
            ratios, added = [], []
            for m in self.runs:
                b = by_pair.get((m.round, m.pair))
                if b and b.rps:
                    ratios.append(m.rps / b.rps)
                    added.append(m.p99_ms - b.p99_ms)
            if ratios:
                self.ratio_vs_baseline = statistics.median(ratios)
                self.p99_added_ms = statistics.median(added)
        elif base.rps and self.rps is not None and base.p99_ms is not None and self.p99_ms is not None:
            self.ratio_vs_baseline = self.rps / base.rps
            self.p99_added_ms = self.p99_ms - base.p99_ms


def schedule(rows: list[str], rounds: int) -> list[tuple[int, int | None, str]]:
    """(round, pair, row) in measuring order: each gateway row beside its baseline, order alternating."""
    plan: list[tuple[int, int | None, str]] = []
    for r in range(rounds):
        pair = 0
        if "direct" in rows:
            plan.append((r, None, "direct"))
        for base, members in (("bare", ["bare-lean", "gw-mem", "gw-cached", "gw-redis", "gw-cluster", "gw-workers",
                                         "gw-full", "gw-1k", "gw-trace"]),
                              ("bare-100k", ["gw-100k"]), ("bare-https", ["gw-https"])):
            chosen = [m for m in members if m in rows]
            if not chosen and base in rows:
                plan.append((r, None, base))
            for m in chosen:
                pair += 1
                order = [base, m] if (r + pair) % 2 else [m, base]
                plan.extend((r, pair, x) for x in order if x in rows)
    return plan


def measure(args: argparse.Namespace, stack: Stack, procs: Processes, rows: dict[str, Row]) -> None:
    warmed: set[str] = set()
    plan = schedule([name for name, row in rows.items() if not row.error], args.rounds)
    for i, (rnd, pair, name) in enumerate(plan, 1):
        row = rows[name]
        if row.error:
            continue
        load = load_for(name, stack)
        try:
            warm = args.warmup + (args.first_warmup if name not in warmed else 0)
            if warm > 0:
                raw = run_load(procs, load, warm, args.connections, args.rate)
                count_sent(stack, name, raw)
            warmed.add(name)
            server = procs.running.get(SERVER_OF[name])
            cpu_before = group_cpu_seconds(server.pid) if server else None
            raw = run_load(procs, load, args.duration, args.connections, args.rate)
            cpu_after = group_cpu_seconds(server.pid) if server else None
            count_sent(stack, name, raw)
        except BenchError as exc:
            row.error = str(exc)
            print(f"  [{i}/{len(plan)}] {name}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        cpu_us = None
        if cpu_before is not None and cpu_after is not None and raw["requests"]:
            cpu_us = (cpu_after - cpu_before) / raw["requests"] * 1e6
        m = Measurement(name, rnd, pair, round(raw["seconds"], 3), int(raw["requests"]), raw["rps"],
                        raw["p50_ms"], raw["p99_ms"], int(raw["errors"]), int(raw["non2xx"]), cpu_us)
        row.runs.append(m)
        print(f"  [{i}/{len(plan)}] round {rnd + 1} {name:<10} {m.rps:>10,.0f} req/s  p50 {m.p50_ms:7.2f} ms  "
              f"p99 {m.p99_ms:7.2f} ms  cpu {fmt(cpu_us, '.0f', ' us/call')}"
              + (f"  errors {m.errors} non-2xx {m.non2xx}" if m.errors or m.non2xx else ""),
              file=sys.stderr, flush=True)
    for row in rows.values():
        bad = sum(m.non2xx + m.errors for m in row.runs)
        total = sum(m.requests for m in row.runs)
        # hey counts requests cut off at the end of -z as errors: allow one per connection and run.
        allowance = max(0.01 * total, args.connections * len(row.runs) if row.tool == "hey" else 0)
        if row.runs and not row.error and bad > allowance:
            row.error = f"{bad} of {total} calls failed (non-2xx or socket errors)"


def count_sent(stack: Stack, row: str, raw: dict[str, float]) -> None:
    gw = stack.gateways.get(SERVER_OF[row])
    if gw is not None:
        gw.requests_sent += int(raw["requests"])


def soak(args: argparse.Namespace, stack: Stack, procs: Processes) -> dict[str, Any]:
    name = args.soak_row
    gw = stack.gateways.get(name)
    if gw is None:
        return {"row": name, "error": stack.failed.get(name, f"{name} is not running")}
    pid = procs.running[name].pid  # run_proxy.sh execs mitmdump; with workers, sum the group
    load = load_for(name, stack)
    count_sent(stack, name, run_load(procs, load, max(args.first_warmup, 5), args.connections))
    argv = [need("wrk"), "-t1", f"-c{args.connections}", f"-d{args.soak}s", "--timeout", "10s",
            "-s", str(HERE / "abs.lua"), f"http://127.0.0.1:{load.port}/"]
    print(f"soak: {name} for {args.soak} s ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = procs.start("soak", argv, env=dict(os.environ, **load.env), stdout_pipe=True)
    samples: list[tuple[float, int]] = []
    interval = max(1.0, args.soak / 30)
    try:
        while proc.poll() is None:
            kb = group_rss_kb(pid)
            if kb is not None:
                samples.append((round(time.monotonic() - started, 1), kb))
            time.sleep(interval)
        out = proc.stdout.read() if proc.stdout else b""
    finally:
        procs.stop("soak")
    raw = parse_wrk(out.decode(errors="replace"))
    count_sent(stack, name, raw)
    if len(samples) < 3:
        return {"row": name, "error": "too few RSS samples"}
    start_kb, end_kb = samples[0][1], samples[-1][1]
    mid_kb = min(samples, key=lambda s: abs(s[0] - args.soak / 2))[1]
    growth = 100.0 * (end_kb - start_kb) / start_kb
    return {"row": name, "seconds": args.soak, "requests": int(raw["requests"]), "rps": raw["rps"],
            "p99_ms": raw["p99_ms"], "errors": int(raw["errors"] + raw["non2xx"]),
            "rss_mb": {"start": start_kb / 1024, "middle": mid_kb / 1024, "end": end_kb / 1024,
                       "max": max(kb for _, kb in samples) / 1024},
            "growth_pct": growth, "growth_second_half_pct": 100.0 * (end_kb - mid_kb) / mid_kb,
            "flat": growth <= args.soak_max_growth, "samples": samples}


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of one process, in seconds (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def group_members(pid: int, mitmdump_only: bool = False) -> list[int] | None:
    """The processes of `pid`'s process group (None when it is gone); `mitmdump_only`: those whose
    command line names mitmdump (the workers row's workers, not run_proxy.sh's shell)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            if mitmdump_only and b"mitmdump" not in (entry / "cmdline").read_bytes():
                continue
        except (OSError, ProcessLookupError):
            continue
        members.append(int(entry.name))
    return members


def group_cpu_seconds(pid: int) -> float | None:
    """CPU time of the server of a row: the process and every process of its group (run_proxy.sh's
    mitmdump, the workers row's workers). Read before and after a measured run, it gives what one call
    cost the proxy itself."""
    readings = [cpu_seconds(member) for member in group_members(pid) or []]
    found = [seconds for seconds in readings if seconds is not None]
    return sum(found) if found else None


def group_rss_kb(pid: int) -> int | None:
    """RSS of the process, or of the mitmdump processes in its group (the workers row)."""
    readings = [rss_kb(member) for member in group_members(pid, mitmdump_only=True) or []]
    found = [kb for kb in readings if kb is not None]
    return sum(found) if found else rss_kb(pid)


def check_gateways(stack: Stack) -> list[str]:
    """After the load: access log complete and free of secrets, calls counted in /metrics."""
    problems: list[str] = []
    for gw in stack.gateways.values():
        time.sleep(0.5)
        lines, leaked, last = 0, False, None
        if gw.log.exists():
            with open(gw.log, "rb") as f:
                for line in f:
                    lines += 1
                    if stack.api_key.encode() in line or stack.app_secret.encode() in line:
                        leaked = True
                    last = line
        gw.checks.update(log_lines=lines, requests_sent=gw.requests_sent, secret_in_log=leaked)
        if lines < 0.9 * gw.requests_sent:
            problems.append(f"{gw.name}: access log has {lines} lines for {gw.requests_sent} calls")
        if leaked:
            problems.append(f"{gw.name}: the injected key or the app secret appears in the access log")
        if last:
            try:
                entry = json.loads(last)
                gw.checks["last_log_entry"] = {k: entry.get(k) for k in ("app", "service", "method", "code", "status")}
                # bench.cached: the gw-cached row; bench.big: the gw-100k row (both on the gw-mem gateway).
                if (entry.get("app"), entry.get("service")) != (APP, "bench") or \
                        entry.get("method") not in ("ping", "cached", "big"):
                    problems.append(f"{gw.name}: last log line names {gw.checks['last_log_entry']}, "
                                    "not app bench, service bench, method ping, cached or big")
            except ValueError:
                problems.append(f"{gw.name}: the access log's last line is not JSON: {last[:200]!r}")
        counted = 0.0
        reached = 0
        for port in gw.admin_ports:
            try:
                status, body = http_get(port, "/metrics", f"127.0.0.1:{port}", {})
            except OSError:
                continue
            if status != 200:
                continue
            reached += 1
            for m in re.finditer(r'^gateway_requests_total\{([^}]*)\}\s+([0-9.e+]+)', body.decode(errors="replace"),
                                 re.M):
                if 'service="bench"' in m.group(1) and 'code="0"' in m.group(1):
                    counted += float(m.group(2))
        gw.checks["metrics_requests_total"] = counted if reached else None
        if reached and counted < 0.9 * gw.requests_sent:
            problems.append(f"{gw.name}: /metrics counts {counted:.0f} successful calls for {gw.requests_sent} sent")
        if not reached:
            problems.append(f"{gw.name}: /metrics was not reachable on {gw.admin_ports}")
    return problems


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def table(rows: dict[str, Row]) -> str:
    header = f"{'row':<11} {'what':<36} {'tool':<4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8} " \
             f"{'p99 added':>10} {'cpu/call':>9}"
    out = [header, "-" * len(header)]
    for row in rows.values():
        if row.error and not row.runs:
            out.append(f"{row.name:<11} {row.label:<36} {row.tool:<4} FAILED: {row.error.splitlines()[0][:200]}")
            continue
        added = None if row.p99_added_ms is None else row.p99_added_ms
        out.append(f"{row.name:<11} {row.label:<36} {row.tool:<4} {fmt(row.rps, ',.0f'):>9} "
                   f"{fmt(row.p50_ms, '.2f'):>8} {fmt(row.p99_ms, '.2f'):>8} "
                   f"{fmt(row.ratio_vs_baseline, '.2f', 'x'):>8} {fmt(added, '+.1f', ' ms'):>10} "
                   f"{fmt(row.cpu_us, ',.0f', ' us'):>9}")
        if row.error:
            out.append(f"{'':<11} ^ {row.error.splitlines()[0][:200]}")
    return "\n".join(out)


def versions(bin_dir: Path) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "-"
        text = (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()
        return text[0] if text else "-"

    return {"mitmdump": first_line([str(bin_dir / "mitmdump"), "--version"]),
            "python": platform.python_version(), "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "-v"]), "redis": first_line(["redis-server", "--version"]),
            "haproxy": first_line(["haproxy", "-v"]), "kernel": platform.release(),
            "commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.sh", description="Gateway benchmark (SPEC 11).")
    p.add_argument("--duration", type=int, default=10, help="seconds measured per row and round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians (default 3)")
    p.add_argument("--connections", "-c", type=int, default=16, help="keep-alive connections (default 16)")
    p.add_argument("--rate", type=int, default=0,
                   help="fixed total requests/s for every row, with hey (default 0: as fast as possible, wrk); "
                        "below saturation the p99 column shows what the proxy adds to one call")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each measurement (default 1)")
    p.add_argument("--first-warmup", type=int, default=3, help="extra warm-up the first time (default 3)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated, of: {','.join(ALL_ROWS)}")
    p.add_argument("--workers", type=int, default=2, help="GATEWAY_WORKERS of the gw-workers row (default 2)")
    p.add_argument("--soak", type=int, default=0, help="seconds of sustained load for the RSS check (default 0)")
    p.add_argument("--soak-row", default="gw-mem", choices=list(GATEWAYS))
    p.add_argument("--soak-max-growth", type=float, default=10.0, help="allowed RSS growth in %% (default 10)")
    p.add_argument("--json", type=Path, help="results file (default bench/results/<UTC timestamp>.json)")
    p.add_argument("--workdir", type=Path, help="scratch directory (run.sh makes one)")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown or not rows:
        p.error(f"--rows: unknown {unknown}; choose from {','.join(ALL_ROWS)}")
    args.rows = [r for r in ALL_ROWS if r in rows]
    for name in ("duration", "rounds", "connections", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    script = ROOT / "addons" / "gateway.py"
    script_mtime = script.stat().st_mtime if script.exists() else None
    own_workdir = args.workdir is None
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"gw-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    procs = Processes(workdir)
    rows = {name: Row(name, LABELS[name], "hey" if name.endswith("https") or args.rate else "wrk",
                      BASELINE.get(name))
            for name in args.rows}
    try:
        need("wrk")
        if args.rate or any(r.endswith("https") for r in rows):
            need("hey")
    except MissingTool as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_MISSING_TOOL
    servers = {SERVER_OF[r] for r in rows}
    if args.soak:
        servers.add(args.soak_row)
    if servers & {"gw-redis", "gw-workers"}:
        servers.add("redis")
    if "gw-cluster" in servers:
        servers.add("cluster")
    stack = Stack(procs, workdir, bin_dir, args.workers)
    soak_result: dict[str, Any] | None = None
    problems: list[str] = []
    try:
        others = ", ".join(sorted(servers - {"nginx"}))
        print(f"bench: starting nginx, {others} (scratch: {workdir})", file=sys.stderr, flush=True)
        try:
            stack.start(servers)
        except MissingTool as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_MISSING_TOOL
        except (BenchError, OSError) as exc:
            print(f"bench: the upstream (nginx) did not start: {exc}", file=sys.stderr)
            return 1
        if "gw-https" in rows and "gw-mem" in stack.gateways:
            try:
                stack.check_https(stack.gateways["gw-mem"])
            except (BenchError, OSError) as exc:
                rows["gw-https"].error = f"HTTPS through the gateway failed: {exc}"
        for row in rows.values():
            reason = stack.failed.get(SERVER_OF[row.name])
            if reason and not row.error:
                row.error = reason
        for name, reason in stack.failed.items():
            print(f"bench: {name} not available: {reason}", file=sys.stderr)
        print(f"bench: {args.rounds} round(s) of {args.duration} s per row, {args.connections} connections",
              file=sys.stderr, flush=True)
        measure(args, stack, procs, rows)
        if args.soak:
            soak_result = soak(args, stack, procs)
        problems = check_gateways(stack)
        if "gw-trace" in stack.gateways:
            received = stack.otlp_received()
            stack.gateways["gw-trace"].checks["otlp_received"] = received
            if not received or not received.get("posts"):
                problems.append("gw-trace: the OTLP sink received no spans")
        for gw in stack.gateways.values():
            proc = procs.running.get(gw.name)
            kb = group_rss_kb(proc.pid) if proc is not None else None
            gw.checks["rss_mb"] = round(kb / 1024, 1) if kb else None
    finally:
        procs.stop_all()
        if stack.www is not None:
            shutil.rmtree(stack.www, ignore_errors=True)
    if script_mtime is not None and script.exists() and script.stat().st_mtime != script_mtime and stack.gateways:
        # mitmproxy reloads a -s script when its file changes: the chain restarted mid-run.
        problems.append("addons/gateway.py changed during the run, so mitmproxy reloaded the chain: run again")
    for row in sorted(rows.values(), key=lambda r: r.baseline is not None):  # baselines first
        row.summarize(rows)

    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), **versions(bin_dir),
                    # Other work on the machine skews every row; the pairing cancels only part of it.
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "params": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                   "warmup_s": args.warmup, "first_warmup_s": args.first_warmup, "workers": args.workers,
                   "http": "HTTP/1.1 keep-alive", "body": "small JSON (-100k rows: 100 KB JSON)"},
        "rows": [asdict(row) for row in rows.values()],
        "checks": {gw.name: gw.checks for gw in stack.gateways.values()},
        "problems": problems,
        "soak": soak_result,
    }
    path = args.json or HERE / "results" / (started.strftime("%Y%m%dT%H%M%SZ") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"HTTP/1.1 keep-alive, {args.connections} connections, {args.rounds} x {args.duration} s per row, "
          f"{os.cpu_count()} cpus (load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")
    print("medians; 'vs bare' and 'p99 added' are against bare mitmdump (gw-100k: against bare-100k; "
          "HTTPS rows: against bare-https)")
    print(table(rows))
    if soak_result:
        print()
        if "error" in soak_result:
            print(f"soak {soak_result['row']}: FAILED: {soak_result['error']}")
        else:
            r = soak_result["rss_mb"]
            print(f"soak {soak_result['row']} {soak_result['seconds']} s: {soak_result['rps']:,.0f} req/s, "
                  f"{soak_result['requests']:,} calls; RSS start {r['start']:.1f} MB, middle {r['middle']:.1f} MB, "
                  f"end {r['end']:.1f} MB: growth {soak_result['growth_pct']:+.1f}% "
                  f"(second half {soak_result['growth_second_half_pct']:+.1f}%) "
                  + ("flat" if soak_result["flat"] else f"GREW more than {args.soak_max_growth:g}%"))
    for gw in stack.gateways.values():
        c = gw.checks
        print(f"check {gw.name}: {c.get('log_lines', 0):,} log lines for {gw.requests_sent:,} calls, "
              f"metrics count {fmt(c.get('metrics_requests_total'), ',.0f')}, "
              f"ready in {fmt(c.get('ready_s'), '.1f', ' s')}, RSS {fmt(c.get('rss_mb'), '.1f', ' MB')}, "
              f"secrets in log: {'YES' if c.get('secret_in_log') else 'no'}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"\nresults: {path}")
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = any(row.error for row in rows.values()) or problems or (soak_result and not soak_result.get("flat"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
