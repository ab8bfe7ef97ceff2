"""The shortest path a user takes: a real mitmdump with the chain, a fake provider, real clients."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import requests

from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules


def rules_for(tmp_path: Path, fake: FakeProvider) -> Path:
    return write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            methods:
              hello: {{method: GET, path: /hello}}
        """,
        "apps.yaml": """
            apps:
              order-service: {secret: s3cret-order}
            gateway: {require_app: true}
        """,
    })


def test_http_https_and_curl_get_the_envelope_with_the_key_injected(tmp_path: Path, confdir: Path,
                                                                     fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    with Gateway(rules_for(tmp_path, fake), confdir, env={"DEMO_KEY": "injected-key-123456"}) as gw:
        # requests over plain HTTP, the app's own key is replaced
        r = requests.get("http://api.demo.test/hello", headers={"X-Api-Key": "apps-own-key"},
                         proxies=gw.proxies("order-service", "s3cret-order"), timeout=10)
        assert r.status_code == 200
        assert r.json()["code"] == 0 and r.json()["data"] == {"greeting": "hi"}
        assert r.headers["X-Request-ID"] == r.json()["request_id"]
        # httpx over HTTPS through CONNECT, credentials on the CONNECT
        tls = ssl.create_default_context(cafile=gw.ca)
        with httpx.Client(proxy=gw.proxy("order-service", "s3cret-order"), verify=tls, timeout=10) as client:
            r2 = client.get("https://api.demo.test/hello", headers={"X-Request-ID": "caller-chosen-id-1"})
        assert r2.status_code == 200 and r2.json()["request_id"] == "caller-chosen-id-1"
        # curl over HTTPS
        out = subprocess.run(["curl", "-s", "--cacert", gw.ca, "-x", gw.proxy("order-service", "s3cret-order"),
                              "https://api.demo.test/hello"], capture_output=True, text=True, timeout=20)
        assert '"code":0' in out.stdout
        seen = fake.hits("/hello")
        assert len(seen) == 3
        assert all(s.headers["x-api-key"] == "injected-key-123456" for s in seen)
        assert all("proxy-authorization" not in s.headers for s in seen)
        assert seen[1].headers["x-request-id"] == "caller-chosen-id-1"
        line = gw.log_for("caller-chosen-id-1")
        assert line["app"] == "order-service" and line["service"] == "demo" and line["method"] == "hello"
        assert "injected-key-123456" not in gw.log_path.read_text()
