"""The data path of SPEC 2-5, 7 and 10 end to end: a real mitmdump with the chain, real clients, fake
providers on 127.0.0.1. One gateway serves the whole module; each test scripts the fake it needs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.conftest import wait_until
from tests.fakes import FakeProvider, Reply, refused_url
from tests.harness import Gateway, write_rules

SECRET = "s3cret-order"
KEY = "injected-demo-key-98765"


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def native() -> Iterator[FakeProvider]:
    """A host no service owns, for pass-through (a service's own upstream address never is)."""
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, provider: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("datapath")
    url = provider.url
    rules = write_rules(tmp / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{url}/base", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            methods:
              hello: {{method: GET, path: /hello}}
              echo: {{method: POST, path: /echo}}
              item: {{path: "/items/{{id}}"}}
              item_special: {{path: "/items/special"}}
        """,
        "strict.yaml": f"""
            service: strict
            hosts: [strict.test]
            upstream: {{url: "{url}"}}
            credentials: {{type: static, query: key, value: "${{DEMO_KEY}}"}}
            methods:
              ping: {{method: GET, path: /ping}}
            unmatched: deny
        """,
        "wx.yaml": f"""
            service: wx
            hosts: [wx.test]
            upstream: {{url: "{url}"}}
            envelope: wechat
        """,
        # A 45009 stops the gateway sending that service calls until WeChat's day ends (SPEC 14):
        # it gets a service of its own, so wx stays usable for the other cases.
        "wxquota.yaml": f"""
            service: wxquota
            hosts: [wxquota.test]
            upstream: {{url: "{url}"}}
            envelope: wechat
        """,
        "ali.yaml": f"""
            service: ali
            hosts: [ali.test]
            upstream: {{url: "{url}"}}
            envelope: alipay
        """,
        "pay.yaml": f"""
            service: pay
            hosts: [pay.test]
            upstream: {{url: "{url}"}}
            envelope: xml
        """,
        "amap.yaml": f"""
            service: amap
            hosts: [amap.test]
            upstream: {{url: "{url}"}}
            envelope: {{type: json, success_field: status, success_values: ["1"], message_field: info}}
        """,
        "rawsvc.yaml": f"""
            service: rawsvc
            hosts: [raw.test]
            upstream: {{url: "{url}"}}
            envelope: raw
        """,
        "off.yaml": f"""
            service: off
            hosts: [off.test]
            upstream: {{url: "{url}"}}
            credentials: {{type: static, header: X-Key, value: "${{NEVER_SET_VARIABLE}}"}}
        """,
        "down.yaml": f"""
            service: down
            hosts: [down.test]
            upstream: {{url: "{refused_url()}", timeout: 1s}}
        """,
        "slow.yaml": f"""
            service: slow
            hosts: [slow.test]
            upstream: {{url: "{url}", timeout: 500ms}}
        """,
        # A wildcard host (an S3-style bucket subdomain): the provider sees the host the caller named.
        "wild.yaml": f"""
            service: wild
            hosts: ["*.wild.test"]
            upstream: {{url: "{url}"}}
            methods:
              get: {{method: GET, path: /object}}
        """,
        "apps.yaml": f"""
            apps:
              order: {{secret: {SECRET}}}
              limited: {{secret: limited-secret, allow: ["demo.hello"]}}
              rawapp: {{secret: rawapp-secret, envelope: raw}}
              office: {{sources: [127.0.0.2/32], allow: ["demo.*"]}}
            gateway:
              require_app: true
              unknown_hosts: allow
              egress: {{allow_cidrs: [127.0.0.0/8]}}
              redact: [{{pattern: "member-\\\\d+", replace: "member-#"}}]
        """,
    })
    gateway = Gateway(rules, confdir, env={"DEMO_KEY": KEY}).start()
    yield gateway
    gateway.stop()


def call(gw: Gateway, url: str, method: str = "GET", app: str | None = "order", secret: str = SECRET,
         **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 15)
    return requests.request(method, url, proxies=gw.proxies(app, secret) if app else gw.proxies(), **kwargs)


def envelope(r: requests.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert body["request_id"] == r.headers["X-Request-ID"]
    if body["code"] != 0:
        assert r.headers["X-Gateway-Code"] == str(body["code"])
    return body


# -- identity (SPEC 7) -----------------------------------------------------------------------------

def test_unidentified_caller_gets_407_with_a_challenge(gw: Gateway, provider: FakeProvider) -> None:
    before = len(provider.hits())
    r = call(gw, "http://api.demo.test/hello", app=None)
    assert r.status_code == 407
    assert r.headers["Proxy-Authenticate"] == 'Basic realm="gateway"'
    body = envelope(r)
    assert body["code"] == -2001 and body["source"] == "caller"
    r = call(gw, "http://api.demo.test/hello", secret="wrong")
    assert r.status_code == 407 and envelope(r)["code"] == -2001
    assert len(provider.hits()) == before


def test_connect_with_wrong_credentials_is_refused_at_the_tunnel(gw: Gateway) -> None:
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        call(gw, "https://api.demo.test/hello", secret="wrong", verify=gw.ca)
    wait_until(lambda: any(line["http_method"] == "CONNECT" and line["code"] == -2001 for line in gw.log_lines()),
               5, what="a log line for the refused tunnel")


def test_proxy_authorization_on_connect_identifies_every_request_in_the_tunnel(
        gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/hello", Reply(200, {"n": 1}))
    ctx = ssl.create_default_context(cafile=gw.ca)
    with httpx.Client(proxy=gw.proxy("order", SECRET), verify=ctx, timeout=10) as client:
        answers = [client.get("https://api.demo.test/hello") for _ in range(3)]
    assert [a.json()["code"] for a in answers] == [0, 0, 0]
    assert gw.log_for(answers[-1].headers["x-request-id"])["app"] == "order"
    assert all("proxy-authorization" not in s.headers for s in provider.hits("/base/hello"))


def _signed_headers(secret: str, method: str, path: str, body: bytes, *, app: str = "order",
                    ts: int | None = None, nonce: str | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    nonce = nonce or uuid.uuid4().hex
    text = "\n".join([method, path, str(ts), nonce, hashlib.sha256(body).hexdigest()])
    signature = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return {"X-Gateway-App": app, "X-Gateway-Timestamp": str(ts), "X-Gateway-Nonce": nonce,
            "X-Gateway-Signature": signature}


def test_signed_requests_identify_once_per_nonce(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("POST", "/base/echo", lambda seen: Reply(200, {"got": seen.json()}))
    body = b'{"msg": "hello"}'
    headers = _signed_headers(SECRET, "POST", "/echo?x=1", body)
    r = call(gw, "http://api.demo.test/echo?x=1", "POST", app=None, data=body,
             headers={**headers, "Content-Type": "application/json"})
    assert envelope(r)["code"] == 0 and r.json()["data"] == {"got": {"msg": "hello"}}
    seen = provider.hits("/base/echo")[-1]
    assert not any(h.startswith("x-gateway-") for h in seen.headers)
    replay = call(gw, "http://api.demo.test/echo?x=1", "POST", app=None, data=body, headers=headers)
    assert replay.status_code == 401 and envelope(replay)["code"] == -2002
    old = _signed_headers(SECRET, "POST", "/echo", body, ts=int(time.time()) - 301)
    assert envelope(call(gw, "http://api.demo.test/echo", "POST", app=None, data=body, headers=old))["code"] == -2002
    forged = _signed_headers("not-the-secret", "POST", "/echo", body)
    assert envelope(call(gw, "http://api.demo.test/echo", "POST", app=None, data=body,
                         headers=forged))["code"] == -2002


def test_client_address_identifies_an_app_with_sources(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/hello", Reply(200, {"n": 1}))
    out = subprocess.run(["curl", "-s", "--interface", "127.0.0.2", "-x", gw.proxy(), "-D", "-",
                          "http://api.demo.test/hello"], capture_output=True, text=True, timeout=20)
    assert '"code":0' in out.stdout, out.stdout
    rid = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
               if line.lower().startswith("x-request-id"))
    assert gw.log_for(rid)["app"] == "office"


def test_allow_list_refuses_other_methods_with_403(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("POST", "/base/echo", Reply(200, {}))
    before = len(provider.hits("/base/echo"))
    r = call(gw, "http://api.demo.test/echo", "POST", app="limited", secret="limited-secret", json={})
    assert r.status_code == 403
    body = envelope(r)
    assert body["code"] == -2003 and body["source"] == "caller" and "demo.echo" in body["message"]
    assert len(provider.hits("/base/echo")) == before


# -- routing (SPEC 4) and credentials ---------------------------------------------------------------

def test_transparent_call_goes_to_the_upstream_url_with_its_base_path_and_key(
        gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/items/special", Reply(200, {"which": "literal"}))
    provider.on("GET", "/base/items/42", Reply(200, {"which": "template"}))
    r1 = call(gw, "http://api.demo.test/items/special", headers={"X-Api-Key": "apps-own"})
    r2 = call(gw, "http://api.demo.test/items/42")
    assert r1.json()["data"] == {"which": "literal"} and r2.json()["data"] == {"which": "template"}
    assert gw.log_for(r1.headers["x-request-id"])["method"] == "item_special"
    assert gw.log_for(r2.headers["x-request-id"])["method"] == "item"
    seen = provider.hits("/base/items/special")[-1]
    assert seen.headers["x-api-key"] == KEY  # replaced, not merged
    assert seen.headers["host"] == f"127.0.0.1:{provider.port}"


def test_a_wildcard_host_reaches_the_provider_as_the_caller_named_it_port_included(
        gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/object", Reply(200, {"ok": True}))
    for named in ("bucket-1.wild.test", "bucket-2.wild.test:8080"):
        answer = call(gw, f"http://{named}/object")
        assert answer.json()["code"] == 0, answer.text
        assert provider.hits("/object")[-1].headers["host"] == named  # the connection: the rule's upstream


def test_explicit_gateway_local_call_fills_the_template_from_the_query(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/items/a b", Reply(200, {"ok": True}))
    provider.on("*", "/base/items/7", lambda seen: Reply(200, {"method": seen.method, "q": seen.query}))
    r = call(gw, "http://gateway.local/demo/item?id=7&x=y")
    assert envelope(r)["code"] == 0
    assert r.json()["data"] == {"method": "GET", "q": {"x": "y"}}
    r = call(gw, "http://gateway.local/demo/nosuch")
    assert r.status_code == 400 and envelope(r)["code"] == -2005


def test_unmatched_allow_uses_method_underscore_and_deny_answers_2005(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/other", Reply(200, {"ok": 1}))
    r = call(gw, "http://api.demo.test/other")
    assert envelope(r)["code"] == 0
    assert gw.log_for(r.headers["x-request-id"])["method"] == "_"
    r = call(gw, "http://strict.test/nothing-here")
    assert r.status_code == 400 and envelope(r)["code"] == -2005


def test_static_query_credential_replaces_the_apps_own(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/ping", Reply(200, {"pong": True}))
    r = call(gw, "http://strict.test/ping?key=apps-own&q=1")
    assert envelope(r)["code"] == 0
    assert provider.hits("/ping")[-1].query == {"q": "1", "key": KEY}


def test_disabled_service_answers_3001(gw: Gateway) -> None:
    r = call(gw, "http://off.test/anything")
    assert r.status_code == 503
    body = envelope(r)
    assert body["code"] == -3001 and body["source"] == "gateway"
    assert "NEVER_SET_VARIABLE" in gw.output()  # the operator is told which variable is missing


def test_unknown_host_passes_through_natively(gw: Gateway, native: FakeProvider) -> None:
    native.on("GET", "/native", Reply(201, "plain text"))
    r = call(gw, f"http://127.0.0.1:{native.port}/native")
    assert r.status_code == 201 and r.text == "plain text"  # the provider's own answer, untouched
    rid = r.headers["X-Request-ID"]
    assert native.hits("/native")[-1].headers["x-request-id"] == rid
    assert "proxy-authorization" not in native.hits("/native")[-1].headers
    line = gw.log_for(rid)
    assert (line["service"], line["method"], line["status"], line["code"], line["app"]) == ("_", "_", 201, 0, "order")


def test_unknown_hosts_deny_refuses_egress(tmp_path: Path, confdir: Path, provider: FakeProvider) -> None:
    rules = write_rules(tmp_path / "rules", {"gateway.yaml": """
        gateway: {require_app: false, unknown_hosts: deny}
    """})
    before = len(provider.hits())
    with Gateway(rules, confdir, admin=False) as gw2:
        r = requests.get(f"http://127.0.0.1:{provider.port}/native", proxies=gw2.proxies(), timeout=10)
    assert r.status_code == 403 and envelope(r)["code"] == -2003
    assert len(provider.hits()) == before


# -- envelopes (SPEC 5) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "path", "reply", "status", "code"), [
    ("wx.test", "/cgi-bin/x", Reply(200, {"errcode": 0, "errmsg": "ok", "openid": "o1"}), 200, 0),
    ("wx.test", "/cgi-bin/x", Reply(200, {"errcode": 40001, "errmsg": "invalid credential"}), 502, -1002),
    ("wxquota.test", "/cgi-bin/x", Reply(200, {"errcode": 45009, "errmsg": "api freq out of limit"}), 503, -1005),
    ("wx.test", "/cgi-bin/x", Reply(200, {"errcode": -1, "errmsg": "system busy"}), 503, -1003),
    ("wx.test", "/cgi-bin/x", Reply(200, {"errcode": 40003, "errmsg": "invalid openid"}), 400, -2005),
    ("ali.test", "/gateway.do", Reply(200, {"alipay_trade_query_response": {"code": "10000", "msg": "Success",
                                                                            "trade_no": "T1"}, "sign": "x"}), 200, 0),
    ("ali.test", "/gateway.do", Reply(200, {"alipay_trade_query_response": {
        "code": "40004", "msg": "Business Failed", "sub_msg": "trade not exist"}}), 400, -2005),
    ("ali.test", "/gateway.do", Reply(200, {"error_response": {"code": "20001", "msg": "Insufficient Token"}}),
     502, -1002),
    ("ali.test", "/gateway.do", Reply(200, {"alipay_x_response": {"code": "20000", "msg": "Service unavailable"}}),
     503, -1003),
    ("pay.test", "/pay/unifiedorder", Reply(200, "<xml><return_code><![CDATA[SUCCESS]]></return_code>"
                                                 "<result_code>SUCCESS</result_code><prepay_id>wx1</prepay_id></xml>"),
     200, 0),
    ("amap.test", "/v3/geocode/geo", Reply(200, {"status": "1", "info": "OK", "geocodes": []}), 200, 0),
    ("amap.test", "/v3/geocode/geo", Reply(200, {"status": "0", "info": "INVALID_PARAMS"}), 502, -1000),
    ("api.demo.test", "/e401", Reply(401, {"error": "bad key"}), 502, -1002),
    ("api.demo.test", "/e404", Reply(404, {"error": "nope"}), 400, -2005),
    ("api.demo.test", "/e429", Reply(429, {"error": "slow down"}), 503, -1005),
    ("api.demo.test", "/e500", Reply(500, "internal failure at db-7.internal"), 502, -1000),
    ("api.demo.test", "/e503", Reply(503, "maintenance"), 503, -1003),
    ("api.demo.test", "/garbage-json", Reply(200, b"{not json", {"Content-Type": "application/json"}), 502, -1004),
    ("api.demo.test", "/garbage", Reply(action="garbage"), 502, -1004),
    ("api.demo.test", "/close", Reply(action="close"), 503, -1003),
])
def test_provider_answers_map_to_the_code_table(gw: Gateway, provider: FakeProvider, host: str, path: str,
                                                reply: Reply, status: int, code: int) -> None:
    prefix = "/base" if host == "api.demo.test" else ""
    provider.on("*", prefix + path, reply)
    r = call(gw, f"http://{host}{path}")
    body = envelope(r)
    assert (r.status_code, body["code"]) == (status, code), r.text
    if code:
        assert body["source"] == ("caller" if code <= -2000 else "upstream")
        assert body["data"] is None
        # The gateway's own words: never the provider's raw body or an internal host name.
        assert "db-7.internal" not in body["message"] and "slow down" not in body["message"]
    if host == "wx.test" and code == 0:
        assert body["data"] == {"openid": "o1"}


def test_transport_failures_are_enveloped_not_mitmproxy_html(gw: Gateway, provider: FakeProvider) -> None:
    r = call(gw, "http://down.test/x")
    assert (r.status_code, envelope(r)["code"]) == (503, -1003)
    provider.on("GET", "/hang", Reply(action="hang"))
    started = time.monotonic()
    r = call(gw, "http://slow.test/hang")
    assert (r.status_code, envelope(r)["code"]) == (504, -1001)
    assert time.monotonic() - started < 0.5 + 1.0  # 500 ms timeout, one attempt, plus slack


def test_raw_envelope_for_service_app_and_request(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/plain", Reply(200, {"errcode": 0, "vendor": "shape"}))
    r = call(gw, "http://raw.test/plain")
    assert r.json() == {"errcode": 0, "vendor": "shape"} and r.headers["X-Request-ID"]
    provider.on("GET", "/base/vendor", Reply(200, {"vendor": "body"}))
    assert call(gw, "http://api.demo.test/vendor", app="rawapp", secret="rawapp-secret").json() == {"vendor": "body"}
    assert call(gw, "http://api.demo.test/vendor", headers={"X-Gateway-Envelope": "raw"}).json() == {"vendor": "body"}
    assert envelope(call(gw, "http://raw.test/plain", headers={"X-Gateway-Envelope": "unified"}))["code"] == 0
    # The gateway's own answers are envelopes even on a raw service.
    r = call(gw, "http://raw.test/plain", app=None)
    assert r.status_code == 407 and envelope(r)["code"] == -2001


# -- access log and redaction (SPEC 10) -----------------------------------------------------------

def test_access_log_line_has_every_field_and_is_redacted(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/hello", Reply(200, {}))
    rid = "trace-" + uuid.uuid4().hex[:12]
    r = call(gw, "http://api.demo.test/hello?phone=13812345678&id=110101199003074477&card=6222020200112233446"
                 "&access_token=tok-abcdef-123&note=member-12345&password=hunter22",
             headers={"X-Request-ID": rid})
    assert r.headers["X-Request-ID"] == rid
    line = gw.log_for(rid)
    for field in ("ts", "request_id", "app", "service", "method", "http_method", "url", "status", "code",
                  "source", "attempts", "target", "latency_ms", "upstream_ms", "error"):
        assert field in line
    assert line["ts"].endswith("Z") and line["target"] == "primary" and line["attempts"] == 1
    url = line["url"]
    assert "1381234****" in url and "13812345678" not in url
    assert "110101********4477" in url
    assert "***************3446" in url and "6222020200112233446" not in url
    assert "tok-abcdef-123" not in url and "hunter22" not in url
    assert "member-#" in url and "member-12345" not in url
    text = gw.log_path.read_text()
    assert KEY not in text and SECRET not in text


def test_caller_request_id_must_be_well_formed(gw: Gateway, provider: FakeProvider) -> None:
    provider.on("GET", "/base/hello", Reply(200, {}))
    r = call(gw, "http://api.demo.test/hello", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["X-Request-ID"] != "bad id with spaces"
    assert provider.hits("/base/hello")[-1].headers["x-request-id"] == r.headers["X-Request-ID"]


def test_basic_auth_header_format(gw: Gateway) -> None:
    # A malformed Proxy-Authorization is an unidentified caller, never a crash.
    r = requests.get("http://api.demo.test/hello", proxies=gw.proxies(), timeout=10,
                     headers={"Proxy-Authorization": "Basic " + base64.b64encode(b"no-colon").decode()})
    assert r.status_code == 407 and envelope(r)["code"] == -2001
    assert json.loads(r.text)["data"] is None


def test_binary_success_passes_through_unwrapped(gw: Gateway, provider: FakeProvider) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    provider.on("POST", "/wxa/getwxacodeunlimit", Reply(200, png, {"Content-Type": "image/png"}))
    r = call(gw, "http://wx.test/wxa/getwxacodeunlimit", "POST", json={"scene": "a=1"})
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    assert r.headers["X-Request-ID"]
    provider.on("POST", "/wxa/getwxacodeunlimit", Reply(200, {"errcode": 40097, "errmsg": "invalid args"}))
    assert envelope(call(gw, "http://wx.test/wxa/getwxacodeunlimit", "POST", json={}))["code"] == -2005


def test_large_body_to_an_unknown_host_is_checked_before_anything_is_sent(
        gw: Gateway, native: FakeProvider) -> None:
    native.on("POST", "/upload", lambda seen: Reply(200, {"received": len(seen.body)}))
    body = b"x" * (2 * 1024 * 1024)
    before = len(native.hits("/upload"))
    refused = call(gw, f"http://127.0.0.1:{native.port}/upload", "POST", app=None, data=body)
    assert refused.status_code == 407 and envelope(refused)["code"] == -2001
    assert len(native.hits("/upload")) == before  # nothing reached the host
    allowed = call(gw, f"http://127.0.0.1:{native.port}/upload", "POST", data=body)
    assert allowed.status_code == 200 and allowed.json() == {"received": len(body)}


def test_an_oversized_body_to_a_service_is_refused_before_it_is_read(gw: Gateway, provider: FakeProvider) -> None:
    before = len(provider.hits("/base/echo"))
    # Only the header and one byte are sent: the gateway answers 413 and closes the connection at once
    # instead of buffering the announced 100 MiB, and says why in the log.
    out = subprocess.run(["curl", "-s", "-x", gw.proxy("order", SECRET), "-H", "Content-Length: 104857600",
                          "-H", "Expect:", "-H", "X-Request-ID: oversized-body-1", "--data-binary", "x",
                          "--max-time", "10", "-w", "%{http_code}", "http://api.demo.test/echo"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.endswith("413")  # answered and closed, well before 10 s
    assert json.loads(out.stdout[:-3])["code"] == -2005
    line = gw.log_for("oversized-body-1")
    assert (line["code"], line["status"]) == (-2005, 413) and "64 MiB" in line["error"]
    assert len(provider.hits("/base/echo")) == before


def test_octet_stream_is_read_as_json_when_it_is_json(gw: Gateway, provider: FakeProvider) -> None:
    # Many servers label everything application/octet-stream: JSON inside still gets the envelope,
    # anything else passes as the file it is.
    provider.on("GET", "/base/labelled", Reply(200, b'{"id": 7}', {"Content-Type": "application/octet-stream"}))
    assert envelope(call(gw, "http://api.demo.test/labelled"))["data"] == {"id": 7}
    blob = bytes(range(256)) * 4
    provider.on("GET", "/base/file", Reply(200, blob, {"Content-Type": "application/octet-stream"}))
    r = call(gw, "http://api.demo.test/file")
    assert r.status_code == 200 and r.content == blob
