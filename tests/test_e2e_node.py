"""Node.js's own `https` module through the gateway, as README's client table says (Node 20 reads
no HTTPS_PROXY: an HttpsProxyAgent from the npm package https-proxy-agent, installed into
tests/node by run_tests.sh with `npm ci`), trusting the gateway's CA by the request's `ca:` option
and by NODE_EXTRA_CA_CERTS. A real mitmdump, a fake provider on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

NODE_DIR = Path(__file__).parent / "node"
APP, APP_SECRET = "node-app", "s3cret-node-5a1c"
INJECTED = "injected-node-key-77c1"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "https-proxy-agent").is_dir():
        pytest.skip("tests/node has no node_modules (run_tests.sh runs `npm ci` there when npm is present)")
    return path


def node_get(gw: Gateway, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """tests/node/get.js: one GET through the gateway as the app, with these extra variables."""
    return subprocess.run([node(), str(NODE_DIR / "get.js"), url], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "GW_PROXY": gw.proxy(APP, APP_SECRET), **env})


def run(gw: Gateway, url: str, **env: str) -> dict:
    done = node_get(gw, url, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_node_https_through_the_gateway(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                        gateways: list[Gateway]) -> None:
    node()
    fake.on("GET", "/v1/hello", Reply(200, {"hello": "node"}))
    rules = write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}/v1", timeout: 5s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            methods:
              hello: {{method: GET, path: /hello}}
        """,
        "apps.yaml": f"apps:\n  {APP}: {{secret: {APP_SECRET}}}\ngateway: {{require_app: true}}\n",
    })
    gw = Gateway(rules, confdir, env={"DEMO_KEY": INJECTED}).start()
    gateways.append(gw)
    by_option = run(gw, "https://api.demo.test/hello", GW_CA=gw.ca)
    by_env = run(gw, "https://api.demo.test/hello", NODE_EXTRA_CA_CERTS=gw.ca)
    for answer in (by_option, by_env):
        assert answer["status"] == 200
        envelope = json.loads(answer["body"])
        assert envelope["code"] == 0 and envelope["data"] == {"hello": "node"}
        assert INJECTED not in answer["body"]
    hits = fake.hits("/v1/hello")
    assert len(hits) == 2 and all(h.headers["x-api-key"] == INJECTED for h in hits)
    assert all("proxy-authorization" not in h.headers for h in hits)
    # Without the CA, Node refuses the gateway's certificate: the trust step is needed, not decoration.
    refused = node_get(gw, "https://api.demo.test/hello")
    assert refused.returncode == 1 and "certificate" in refused.stderr.lower(), refused.stderr
    assert len(fake.hits("/v1/hello")) == 2
