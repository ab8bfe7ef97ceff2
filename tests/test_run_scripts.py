"""The scripts a user runs, run as a user runs them: run_proxy.sh (one process, and GATEWAY_WORKERS=N
behind haproxy) and the interpreter discovery of scripts/env.sh.

Every process is started in its own session so that, whatever happens, the finally blocks can stop
the whole group; the tests themselves stop the script only with SIGTERM, as a supervisor would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT, free_port, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import wait_port_closed, write_rules

RUN_PROXY = str(ROOT / "run_proxy.sh")
ENV_SH = str(ROOT / "scripts" / "env.sh")
SECRET = "s3cret-order"


# -- helpers ------------------------------------------------------------------------------------


# The scripts' CA goes here, never into the repository's certs/ (an operator's CA must be their own).
SCRIPT_CONFDIR = Path(tempfile.mkdtemp(prefix="gateway-test-ca-"))


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_CONFDIR"] = str(SCRIPT_CONFDIR)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    env.update(extra)
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port_pair() -> int:
    """A port p with p and p+1 both free (GATEWAY_ADMIN gives worker i base+i)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return json.loads(answer.read())


def ready(admin: str) -> bool:
    with urllib.request.urlopen(f"{admin}/readyz", timeout=1) as answer:
        return answer.status == 200


def requests_total(admin: str, service: str | None = None) -> float:
    """Sum of gateway_requests_total samples on one process (optionally of one service)."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("gateway_requests_total{"):
            continue
        if service is not None and f'service="{service}"' not in line:
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


class Script:
    """./run_proxy.sh as a subprocess in its own session, its stdout and stderr in one file."""

    def __init__(self, out: Path, env: dict[str, str], args: list[str] | None = None,
                 err: Path | None = None) -> None:
        self.out_path = out
        self.out = open(out, "wb")
        self.err = open(err, "wb") if err is not None else None  # else stderr goes to `out` too
        self.proc = subprocess.Popen([RUN_PROXY, *(args or [])], stdout=self.out,
                                     stderr=self.err if self.err is not None else subprocess.STDOUT,
                                     env=env, cwd=str(ROOT), start_new_session=True)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"run_proxy.sh exited with {self.proc.returncode}:\n{self.output()}")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM to the script's own process only, as a supervisor sends it; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run_proxy.sh still running {timeout}s after SIGTERM:\n{self.output()}") from None

    def cleanup(self) -> None:
        """Whatever happened: nothing of this run survives the test."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()
        if self.err is not None:
            self.err.close()


@contextmanager
def run_proxy(out: Path, env: dict[str, str], args: list[str] | None = None,
              err: Path | None = None) -> Iterator[Script]:
    script = Script(out, env, args, err)
    try:
        yield script
    finally:
        script.cleanup()


def demo_rules(directory: Path, fake: FakeProvider, extra: dict[str, str] | None = None) -> Path:
    return write_rules(directory, {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            methods:
              hello: {{method: GET, path: /hello}}
        """,
        "apps.yaml": f"""
            apps:
              order-service: {{secret: {SECRET}}}
            gateway: {{require_app: true}}
        """,
        **(extra or {}),
    })


def proxies(port: int) -> dict[str, str]:
    url = f"http://order-service:{SECRET}@127.0.0.1:{port}"
    return {"http": url, "https": url}


# -- 1. run_proxy.sh, one process -----------------------------------------------------------------


def test_run_proxy_serves_logs_passes_arguments_on_and_stops_on_sigterm(tmp_path: Path, fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    rules = demo_rules(tmp_path / "rules", fake)
    # GATEWAY_RULES names a directory without the demo service: the --set on the command line must
    # win, and run_proxy.sh must not pass its own gateway_rules as well (mitmproxy would refuse it).
    decoy = write_rules(tmp_path / "decoy", {"apps.yaml": "apps: {}\n"})
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    log = tmp_path / "access.log"
    env = script_env(GATEWAY_RULES=str(decoy), GATEWAY_LISTEN=f"127.0.0.1:{port}",
                     GATEWAY_ADMIN=f"127.0.0.1:{admin_port}", GATEWAY_LOG=str(log),
                     DEMO_KEY="injected-key-123456")
    # Both spellings of --set, each overriding one of run_proxy.sh's defaults (flow_detail=0).
    args = ["--set", f"gateway_rules={rules}", "--set=flow_detail=1"]
    with run_proxy(tmp_path / "run_proxy.out", env, args) as script:
        def is_ready() -> bool:
            script.check_running()
            return ready(admin)

        wait_until(is_ready, 60, what=f"/readyz of run_proxy.sh\n{script.output()}")
        status = get_json(f"{admin}/status")
        assert status["rules"]["directory"] == str(rules)
        assert status["services"]["demo"]["enabled"] is True
        assert status["access_log"]["path"] == str(log)
        pid = status["pid"]

        r = requests.get("http://api.demo.test/hello", headers={"X-Api-Key": "apps-own-key",
                                                                "X-Request-ID": "run-proxy-call-1"},
                         proxies=proxies(port), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["code"] == 0 and r.json()["data"] == {"greeting": "hi"}
        assert r.json()["request_id"] == "run-proxy-call-1"
        seen = fake.hits("/hello")
        assert len(seen) == 1 and seen[0].headers["x-api-key"] == "injected-key-123456"
        assert "proxy-authorization" not in seen[0].headers

        def logged() -> dict[str, Any] | None:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            return next((x for x in lines if x["request_id"] == "run-proxy-call-1"), None)

        line = wait_until(logged, 5, what="the access-log line in GATEWAY_LOG")
        assert isinstance(line, dict)
        assert (line["app"], line["service"], line["method"], line["code"]) == ("order-service", "demo", "hello", 0)
        assert "injected-key-123456" not in log.read_text()
        # flow_detail=1 (the user's) prints each flow; run_proxy.sh's default of 0 would print none.
        wait_until(lambda: "api.demo.test/hello" in script.output(), 5, what=f"flow line\n{script.output()}")
        assert "multiple values" not in script.output()

        # run_proxy.sh execs mitmdump, so the script's process is the gateway itself.
        assert pid == script.proc.pid
        code = script.terminate()
        assert code in (0, -signal.SIGTERM), script.output()
        assert not alive(pid)
        wait_port_closed(port, 5)
        wait_port_closed(admin_port, 5)
        assert "Traceback" not in script.output()


def test_with_the_access_log_on_stdout_every_stdout_line_is_json(tmp_path: Path, fake: FakeProvider) -> None:
    """From the first line: mitmproxy's own "Loading script" line included goes to stderr."""
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    env = script_env(GATEWAY_RULES=str(demo_rules(tmp_path / "rules", fake)), GATEWAY_LISTEN=f"127.0.0.1:{port}",
                     GATEWAY_ADMIN=f"127.0.0.1:{admin_port}", DEMO_KEY="injected-key-123456")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with run_proxy(out, env, err=err) as script:
        def is_ready() -> bool:
            script.check_running()
            return ready(admin)

        wait_until(is_ready, 60, what=f"/readyz of run_proxy.sh\n{err.read_text(errors='replace')}")
        r = requests.get("http://api.demo.test/hello", headers={"X-Request-ID": "stdout-json-1"},
                         proxies=proxies(port), timeout=10)
        assert r.json()["code"] == 0

        def logged() -> list[dict[str, Any]] | None:
            lines = [line for line in out.read_text().splitlines() if line.strip()]
            records = [json.loads(line) for line in lines]  # every line, the first included, or this raises
            return records if any(x.get("request_id") == "stdout-json-1" for x in records) else None

        wait_until(logged, 10, what=f"the access-log line on stdout\n{out.read_text()}")
        assert script.terminate() in (0, -signal.SIGTERM)
    assert "Loading script" in err.read_text()  # mitmproxy's own lines are kept, on stderr


# -- 2. interpreter discovery ---------------------------------------------------------------------

FAKE_OLD = """#!/bin/sh
# Python 3.11: answers -V, fails the >= 3.12 check as the real one does.
if [ "$1" = "-V" ]; then echo "Python 3.11.9"; exit 0; fi
exit 1
"""
FAKE_SHIM = """#!/bin/sh
# A pyenv shim for a version that is not active: on PATH, but fails whatever it is asked.
echo "pyenv: python3.13: command not found" >&2
exit 127
"""
FAKE_NEW = """#!/bin/sh
# Python 3.13: passes the version check; cannot make a venv (so nothing gets created).
if [ "$1" = "-V" ]; then echo "Python 3.13.1"; exit 0; fi
if [ "$1" = "-m" ]; then echo "fake python: no $2 here" >&2; exit 1; fi
exit 0
"""


def fake_python(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def discover(tmp_path: Path, path_dirs: list[Path], call: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Sources scripts/env.sh, then runs `call` with PATH reduced to `path_dirs` (plus a directory
    holding only ls and sort, which the pyenv lookup uses), HOME and PYENV_ROOT in tmp_path, and
    GW_ROOT a scratch directory, so the project's own .venv is never looked at or touched."""
    tools = tmp_path / "tools"
    if not tools.exists():
        tools.mkdir()
        for tool in ("ls", "sort"):
            found = shutil.which(tool)
            assert found, tool
            (tools / tool).symlink_to(found)
    home, pyenv, root = tmp_path / "home", tmp_path / "pyenv", tmp_path / "root"
    for d in (home, pyenv, root):
        d.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    env = {"HOME": str(home), "PYENV_ROOT": str(pyenv), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "FAKE_PATH": ":".join(str(d) for d in [*path_dirs, tools]), "SCRATCH_ROOT": str(root), **extra}
    script = f'source "{ENV_SH}" || exit 99; GW_ROOT="$SCRATCH_ROOT"; PATH="$FAKE_PATH"; {call}'
    return subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_no_python_312_is_reported_clearly_and_a_good_one_is_chosen(tmp_path: Path) -> None:
    old = tmp_path / "old"
    fake_python(old, "python3", FAKE_OLD)
    fake_python(old, "python3.13", FAKE_SHIM)

    # Nothing usable: gw_find_python fails quietly, gw_ensure_venv says what is needed.
    found = discover(tmp_path, [old], "gw_find_python")
    assert found.returncode != 0 and found.stdout == ""
    ensured = discover(tmp_path, [old], "gw_ensure_venv ''")
    assert ensured.returncode != 0
    assert "no Python >= 3.12 found" in ensured.stderr
    assert "Python >= 3.12" in ensured.stderr and "GATEWAY_PYTHON" in ensured.stderr
    assert not (tmp_path / "root" / ".venv").exists()
    # An old GATEWAY_PYTHON is not taken either.
    assert discover(tmp_path, [old], "gw_find_python", GATEWAY_PYTHON=str(old / "python3")).returncode != 0

    # A good interpreter after the failing ones on PATH: every candidate is run, so the shim
    # (python3.13, tried first) and the 3.11 (python3, tried next) are passed over for `python`.
    new = tmp_path / "new"
    good = fake_python(new, "python", FAKE_NEW)
    found = discover(tmp_path, [old, new], "gw_find_python")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(good)
    # gw_ensure_venv builds .venv with it (the fake cannot, so the attempt is where it stops).
    ensured = discover(tmp_path, [old, new], "gw_ensure_venv ''")
    assert ensured.returncode != 0
    assert f"creating .venv with {good} (Python 3.13.1)" in ensured.stderr

    # GATEWAY_PYTHON comes before PATH.
    chosen = fake_python(tmp_path / "chosen", "py", FAKE_NEW)
    found = discover(tmp_path, [old, new], "gw_find_python", GATEWAY_PYTHON=str(chosen))
    assert found.returncode == 0 and found.stdout.strip() == str(chosen)

    # pyenv's versions are looked at when PATH has nothing usable.
    in_pyenv = fake_python(tmp_path / "pyenv" / "versions" / "3.12.8" / "bin", "python3.12", FAKE_NEW)
    found = discover(tmp_path, [old], "gw_find_python")
    assert found.returncode == 0 and found.stdout.strip() == str(in_pyenv)


# -- 3. GATEWAY_WORKERS=N sharing the listen port ------------------------------------------------


def call_from(source: str, port: int, request_id: str) -> dict[str, Any]:
    """One call without credentials from a client socket bound to `source` (bounded in time)."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET http://api.demo.test/hello HTTP/1.1\r\nHost: api.demo.test\r\nX-Request-ID: {request_id}"
                  "\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < 65536 and (chunk := s.recv(4096)):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def stop_and_check_gone(script: Script, pids: set[int], ports: list[int]) -> None:
    assert pids, "no processes found below run_proxy.sh"
    code = script.terminate()
    assert code == 0, f"exit status {code}\n{script.output()}"
    wait_until(lambda: not any(alive(p) for p in pids), 10,
               what="workers to exit: " + ", ".join(command_of(p) for p in pids if alive(p)))
    for port in ports:
        wait_port_closed(port, 5)


def test_workers_share_the_port_quotas_and_see_real_client_addresses(tmp_path: Path, fake: FakeProvider,
                                                                      redis_url: str) -> None:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    fake.on("GET", "/metered", Reply(200, {"ok": True}))
    metered = "metered-" + uuid.uuid4().hex[:8]  # fresh quota keys even on a shared REDIS_URL
    rules = demo_rules(tmp_path / "rules", fake, {"metered.yaml": f"""
        service: {metered}
        hosts: [api.metered.test]
        upstream: {{url: "{fake.url}", timeout: 2s}}
        quota: [{{limit: 10/hour, per: service}}]
        methods:
          get: {{method: GET, path: /metered}}
    """, "sources.yaml": """
        apps:
          third: {sources: [127.0.0.3/32]}
          fourth: {sources: [127.0.0.4/32]}
    """})
    port, admin_base = free_port(), free_port_pair()
    admins = [f"http://127.0.0.1:{admin_base + i}" for i in range(2)]
    log = tmp_path / "access.log"
    env = script_env(GATEWAY_WORKERS="2", GATEWAY_REDIS=redis_url, GATEWAY_RULES=str(rules),
                     GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_ADMIN=f"127.0.0.1:{admin_base}",
                     GATEWAY_LOG=str(log), DEMO_KEY="injected-key-123456")
    with run_proxy(tmp_path / "workers.out", env) as script:
        def all_ready() -> bool:
            script.check_running()
            return all(ready(a) for a in admins) and "workers sharing" in script.output()

        wait_until(all_ready, 90, what=f"both workers ready\n{script.output()}")
        assert "WARNING" not in script.output()
        worker_pids = {get_json(f"{a}/status")["pid"] for a in admins}
        assert len(worker_pids) == 2
        pids = descendants(script.proc.pid)
        assert worker_pids <= pids
        assert not any("haproxy" in command_of(p) for p in pids), [command_of(p) for p in pids]

        def call(host: str, path: str) -> requests.Response:
            return requests.get(f"http://{host}{path}", proxies=proxies(port), timeout=10)

        answers = [call("api.demo.test", "/hello") for _ in range(20)]
        assert [(r.status_code, r.json()["code"]) for r in answers] == [(200, 0)] * 20
        assert all(s.headers["x-api-key"] == "injected-key-123456" for s in fake.hits("/hello"))
        served = [requests_total(a, "demo") for a in admins]
        assert all(n > 0 for n in served) and sum(served) == 20, served

        # A fixed hourly window: keep the 20 calls inside one hour.
        if time.time() % 3600 > 3590:
            time.sleep(3600 - time.time() % 3600 + 0.5)
        answers = [call("api.metered.test", "/metered") for _ in range(20)]
        codes = [r.json()["code"] for r in answers]
        assert codes.count(0) == 10 and codes.count(-2004) == 10, codes
        assert all(r.status_code == 429 for r in answers if r.json()["code"] == -2004)
        assert len(fake.hits("/metered")) == 10
        metered_served = [requests_total(a, metered) for a in admins]
        assert all(n > 0 for n in metered_served) and sum(metered_served) == 20, metered_served

        # Both workers append to the one GATEWAY_LOG: every call is there, once, whole.
        def lines() -> list[dict[str, Any]] | None:
            parsed = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            return parsed if len(parsed) >= 40 else None

        logged = wait_until(lines, 5, what="40 access-log lines")
        assert isinstance(logged, list) and len(logged) == 40
        assert len({x["request_id"] for x in logged}) == 40
        assert sorted(x["code"] for x in logged if x["service"] == metered) == [-2004] * 10 + [0] * 10

        # Callers on 127.0.0.3 and 127.0.0.4, identified by `sources` alone: every worker sees the
        # caller's own address, never a balancer's.
        by_address = {}
        before = [requests_total(a, "demo") for a in admins]
        for i in range(16):
            source = "127.0.0.3" if i % 2 else "127.0.0.4"
            rid = f"sources-call-{i:02d}-{uuid.uuid4().hex[:8]}"
            body = call_from(source, port, rid)
            assert body["code"] == 0, body
            by_address[rid] = source
        # The kernel spreads connections by their addresses and ports: 16 land on one worker only
        # with a chance of 2 in 65536.
        served = [requests_total(a, "demo") - n for a, n in zip(admins, before, strict=True)]
        assert sum(served) == 16 and all(n > 0 for n in served), served
        wanted = {rid: ("third" if source == "127.0.0.3" else "fourth") for rid, source in by_address.items()}

        def apps_logged() -> dict[str, str] | None:
            entries = (json.loads(x) for x in log.read_text().splitlines() if x.strip())
            found = {x["request_id"]: x["app"] for x in entries if x["request_id"] in wanted}
            return found if len(found) == len(wanted) else None

        assert wait_until(apps_logged, 5, what="the sources calls in the access log") == wanted

        stop_and_check_gone(script, descendants(script.proc.pid) | pids, [port, admin_base, admin_base + 1])
        assert "stopping 2 workers" in script.output()


def test_workers_without_redis_warn_that_state_is_per_process(tmp_path: Path, fake: FakeProvider) -> None:
    rules = demo_rules(tmp_path / "rules", fake)
    port = free_port()
    env = script_env(GATEWAY_WORKERS="2", GATEWAY_RULES=str(rules), GATEWAY_LISTEN=f"127.0.0.1:{port}",
                     GATEWAY_ADMIN="off", GATEWAY_LOG=str(tmp_path / "access.log"))
    with run_proxy(tmp_path / "workers.out", env) as script:
        def started() -> bool:
            script.check_running()
            return "workers sharing" in script.output()

        wait_until(started, 90, what=f"workers started\n{script.output()}")
        warning = " ".join(x for x in script.output().splitlines() if "WARNING" in x)
        assert re.search(r"2 workers without GATEWAY_REDIS", warning), script.output()
        assert "quotas, provider tokens and replay nonces" in warning and "per process" in warning
        pids = descendants(script.proc.pid)
        assert sum("mitmdump" in command_of(p) for p in pids) == 2
        stop_and_check_gone(script, pids, [port])
