"""A real gateway for end-to-end tests: `mitmdump -s addons/gateway.py` as a subprocess on free ports,
with its own rules directory, access-log file and admin listener."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port, wait_until

MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))


def write_rules(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


class Gateway:
    def __init__(self, rules: Path, confdir: Path, *, redis: str = "", env: dict[str, str] | None = None,
                 args: list[str] | None = None, admin: bool = True, ui: str = "mitmdump") -> None:
        self.rules = rules
        self.confdir = confdir
        self.port = free_port()
        self.admin_port = free_port() if admin else None
        self.log_path = rules.parent / f"access-{self.port}.log"
        self.out_path = rules.parent / f"mitmdump-{self.port}.out"
        binary = MITMDUMP if ui == "mitmdump" else str(Path(sys.executable).with_name(ui))
        self.cmd = [
            binary, "-s", str(ROOT / "addons" / "gateway.py"),
            "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
            "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy",
            "--set", f"gateway_rules={rules}", "--set", f"gateway_log={self.log_path}",
            "--set", f"gateway_redis={redis}",
            "--set", "gateway_admin=" + (f"127.0.0.1:{self.admin_port}" if self.admin_port else "off"),
            "--set", "flow_detail=0", *(args or []),
        ]
        self.env = {**os.environ, **(env or {})}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            self.env.pop(name, None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, expect_ready: bool = True) -> Gateway:
        self.out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(ROOT))
        if expect_ready:
            wait_until(self._listening, 30, what=f"gateway on {self.port}\n{self.output()}")
            if self.admin_port:
                wait_until(self._ready, 30, what=f"/readyz of gateway on {self.port}\n{self.output()}")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
        with urllib.request.urlopen(f"{self.admin}/readyz", timeout=1) as answer:
            return answer.status == 200

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def proxy(self, app: str | None = None, secret: str | None = None) -> str:
        auth = f"{app}:{secret}@" if app else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def proxies(self, app: str | None = None, secret: str | None = None) -> dict[str, str]:
        url = self.proxy(app, secret)
        return {"http": url, "https": url}

    @property
    def ca(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_lines(self) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def log_for(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((r for r in self.log_lines() if r["request_id"] == request_id), None)

        return wait_until(find, timeout, what=f"access-log line for {request_id}")  # type: ignore[return-value]

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_port_closed(port: int, timeout: float = 10) -> None:
    def closed() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return False
        except OSError:
            return True

    wait_until(closed, timeout, what=f"port {port} to close")

