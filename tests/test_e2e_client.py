"""`gateway_client` (SPEC 16) and the explicit form it uses (SPEC 4), against a real gateway and a fake
provider: sync and asyncio, signed, path templates from params, the HTTP method the rule names, each
error class, and the app's secret never written anywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway_client import CallerError, GatewayError, GatewayFault, ProviderError, agateway_call, gateway_call
from tests.fakes import FakeProvider, Reply, Seen, refused_url
from tests.harness import Gateway, write_rules

APP, SECRET = "checkout", "checkout-signing-secret-8Jq2w"
PROXY_APP, PROXY_SECRET = "tools", "tools-proxy-pass-3Lr9"


def item(seen: Seen) -> Reply:
    return Reply(200, {"id": seen.route.rsplit("/", 1)[-1], "query": seen.query, "body": seen.body.decode()})


@pytest.fixture(scope="module")
def shop() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    fake.on("GET", "/api/items/6", item)
    fake.on("GET", "/api/items/a%20b", item)
    fake.on("PUT", "/api/items/6", lambda seen: Reply(200, {"updated": seen.json(), "query": seen.query}))
    fake.on("POST", "/api/orders", lambda seen: Reply(200, {"order": seen.json(), "status": "created"}))
    fake.on("GET", "/api/busy", Reply(503, {"error": "overloaded"}))
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, shop: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("client")
    rules = write_rules(tmp / "rules", {
        "shop.yaml": f"""
            service: shop
            hosts: [shop.example.com]
            upstream: {{url: "{shop.url}/api", timeout: 5s}}
            methods:
              get_item: {{method: GET, path: "/items/{{id}}"}}
              update_item: {{method: PUT, path: "/items/{{id}}"}}
              create_order: {{method: POST, path: /orders}}
              busy: {{method: GET, path: /busy}}
        """,
        "off.yaml": """
            service: off
            upstream: {url: "https://off.example.com"}
            credentials: {type: static, header: X-Key, value: "${OFF_KEY_NEVER_SET}"}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: "${{CHECKOUT_SECRET}}", allow: ["shop.*", "off.*"]}}
              {PROXY_APP}: {{secret: "${{TOOLS_SECRET}}", allow: ["shop.*"], envelope: raw}}
            gateway: {{require_app: true, unknown_hosts: deny}}
        """,
    })
    gateway = Gateway(rules, confdir, env={"CHECKOUT_SECRET": SECRET, "TOOLS_SECRET": PROXY_SECRET}).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def client_env(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PROXY", f"http://127.0.0.1:{gw.port}")
    monkeypatch.setenv("GATEWAY_APP", APP)
    monkeypatch.setenv("GATEWAY_APP_SECRET", SECRET)


def test_sync_call_fills_the_template_and_uses_the_rules_method(client_env: None, gw: Gateway,
                                                                shop: FakeProvider) -> None:
    before = len(shop.hits())
    data = gateway_call("shop", "get_item", {"id": "6", "fields": "name,price", "limit": 2})
    assert data == {"id": "6", "query": {"fields": "name,price", "limit": "2"}, "body": ""}
    data = gateway_call("shop", "update_item", {"id": 6, "name": "lamp"})
    assert data == {"updated": {"name": "lamp"}, "query": {}}  # id filled the path, the rest is the body
    data = gateway_call("shop", "create_order", {"sku": "A-1", "qty": 3})
    assert data == {"order": {"sku": "A-1", "qty": 3}, "status": "created"}
    hits = shop.hits()[before:]
    assert [(s.method, s.path, s.body) for s in hits] == [
        ("GET", "/api/items/6?fields=name%2Cprice&limit=2", b""),
        ("PUT", "/api/items/6", b'{"name":"lamp"}'),
        ("POST", "/api/orders", b'{"sku":"A-1","qty":3}'),
    ]
    for seen in hits:  # the signature headers are the gateway's business, never the provider's
        assert not [h for h in seen.headers if h.startswith("x-gateway-")]
        assert SECRET not in json.dumps(seen.headers)


def test_async_call_with_overrides(gw: Gateway, shop: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_PROXY", "GATEWAY_APP", "GATEWAY_APP_SECRET"):
        monkeypatch.delenv(name, raising=False)

    async def calls() -> list[object]:
        kw = {"proxy": f"http://127.0.0.1:{gw.port}", "app": APP, "secret": SECRET, "timeout": 10}
        return list(await asyncio.gather(
            agateway_call("shop", "get_item", {"id": "a b"}, **kw),
            agateway_call("shop", "create_order", {"sku": "B-2"}, request_id="client-req-0001", **kw)))

    first, second = asyncio.run(calls())
    assert first == {"id": "a%20b", "query": {}, "body": ""}  # quoted into one path segment
    assert second == {"order": {"sku": "B-2"}, "status": "created"}
    assert gw.log_for("client-req-0001")["app"] == APP


def test_each_error_class(client_env: None, gw: Gateway) -> None:
    with pytest.raises(CallerError) as caller:
        gateway_call("shop", "no_such_method", {})
    assert (caller.value.code, caller.value.source, caller.value.status) == (-2005, "caller", 400)
    assert caller.value.request_id and "no_such_method" in caller.value.message
    with pytest.raises(CallerError) as missing:
        gateway_call("shop", "get_item", {"fields": "x"})
    assert missing.value.code == -2005 and "'id'" in missing.value.message
    with pytest.raises(CallerError) as bad_signature:
        gateway_call("shop", "get_item", {"id": "6"}, secret="not-the-secret")
    assert bad_signature.value.code == -2002
    with pytest.raises(ProviderError) as provider:
        gateway_call("shop", "busy")
    assert (provider.value.code, provider.value.source) == (-1003, "upstream")
    with pytest.raises(GatewayFault) as fault:
        gateway_call("off", "anything")
    assert (fault.value.code, fault.value.source) == (-3001, "gateway")
    with pytest.raises(GatewayFault) as unreachable:
        gateway_call("shop", "get_item", {"id": "6"}, proxy=refused_url(), timeout=2)
    assert "unreachable" in unreachable.value.message
    for error in (caller, missing, bad_signature, provider, fault, unreachable):
        assert isinstance(error.value, GatewayError) and SECRET not in str(error.value)


def test_missing_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_APP_SECRET", raising=False)
    monkeypatch.setenv("GATEWAY_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("GATEWAY_APP", APP)
    with pytest.raises(ValueError, match="GATEWAY_APP_SECRET"):
        gateway_call("shop", "get_item", {"id": "6"})
    with pytest.raises(ValueError, match="plain name"):
        gateway_call("shop/../x", "get_item", secret="s")


def test_the_secret_is_never_logged(client_env: None, gw: Gateway) -> None:
    gateway_call("shop", "get_item", {"id": "6"}, request_id="secret-check-0001")
    with pytest.raises(CallerError):
        gateway_call("shop", "get_item", {"id": "6"}, secret=SECRET + "-wrong", request_id="secret-check-0002")
    gw.log_for("secret-check-0001")
    gw.log_for("secret-check-0002")
    for text in (gw.log_path.read_text(), gw.output(), requests.get(f"{gw.admin}/status", timeout=5).text,
                 requests.get(f"{gw.admin}/metrics", timeout=5).text):
        assert SECRET not in text


def test_explicit_form_json_body_and_method_from_the_rule(gw: Gateway, shop: FakeProvider) -> None:
    """A plain client: a POST with a JSON body to a GET method goes upstream as a GET, no body, the
    body's fields as the query; `{id}` is filled from the body."""
    before = len(shop.hits())
    answer = requests.post("http://gateway.local/shop/get_item?fields=name", json={"id": "6", "page": 2,
                           "tags": ["a", "b"]}, proxies=gw.proxies(PROXY_APP, PROXY_SECRET), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": "6", "query": {"fields": "name", "page": "2", "tags": "b"}, "body": ""}
    (seen,) = shop.hits()[before:]
    assert (seen.method, seen.path, seen.body) == ("GET", "/api/items/6?fields=name&page=2&tags=a&tags=b", b"")
    assert "content-type" not in seen.headers
