"""With the access log on stdout (no gateway_log), stdout carries JSON lines only: mitmproxy's connect
lines and flow output go to stderr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import requests

from tests.conftest import ROOT, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules


def test_stdout_holds_only_the_json_access_log(tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    fake.on("GET", "/v1/ping", Reply(200, {"pong": True}))
    rules = write_rules(tmp_path / "rules", {
        "svc.yaml": f"""
            service: svc
            hosts: [svc.example.com]
            upstream: {{url: "{fake.url}", timeout: 5s}}
        """,
        "apps.yaml": "apps:\n  a1: {secret: s3cret-a1}\n",
    })
    gw = Gateway(rules, confdir)
    cmd = [*_without_option(gw.cmd, "gateway_log"), "--set", "flow_detail=1"]
    cmd = _without_option(cmd, "flow_detail", keep_last=True)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=gw.env, cwd=str(ROOT))
        try:
            gw.proc = proc
            wait_until(gw._ready, 30, what="/readyz")
            for n in range(3):
                answer = requests.get("http://svc.example.com/v1/ping", proxies=gw.proxies("a1", "s3cret-a1"),
                                      headers={"X-Request-ID": f"stdout-check-{n:04d}"}, timeout=10)
                assert answer.json()["code"] == 0

            def logged() -> list[dict[str, object]] | None:
                lines = json_part(out.read_text())
                records = [json.loads(line) for line in lines]  # every line is JSON, or this raises
                ids = {r.get("request_id") for r in records}
                return records if {f"stdout-check-{n:04d}" for n in range(3)} <= ids else None

            wait_until(logged, 10, what="three access-log lines on stdout")
        finally:
            proc.terminate()
            proc.wait(15)
            gw.proc = None
    text = out.read_text()
    assert "client connect" not in text and "<< 200 OK" not in text
    assert len(json_part(text)) == 3 and all(json.loads(line) for line in json_part(text))
    assert "client connect" in err.read_text()  # mitmproxy's own lines are still there, on stderr


def json_part(text: str) -> list[str]:
    """stdout's lines after mitmproxy's one "Loading script" line, printed before the chain is loaded."""
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and "Loading script" in lines[0]:
        lines = lines[1:]
    return lines


def _without_option(cmd: list[str], name: str, keep_last: bool = False) -> list[str]:
    """`cmd` without its `--set NAME=...` pairs (but the last one, with keep_last)."""
    positions = [i for i, arg in enumerate(cmd) if arg.startswith(f"{name}=") and i > 0 and cmd[i - 1] == "--set"]
    if keep_last:
        positions = positions[:-1]
    drop = {p for i in positions for p in (i - 1, i)}
    return [arg for i, arg in enumerate(cmd) if i not in drop]
