"""The shipped `rules/` as shipped (only environment variables point them at fakes), with the vendors'
own SDKs unmodified: python-alipay-sdk (`GET /gateway.do`) and wechatpy."""

from __future__ import annotations

import shutil
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_until
from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway
from tests.test_e2e_signing import ALIPAY_APPID, AlipayKeys, FakeAlipay, alipay_client

PAYMENT_SECRET = "payment-proxy-pass-4Fz7"
WECHAT_SDK, WECHAT_SDK_SECRET = "wechat-sdk-app", "wechat-sdk-proxy-pass-2Hn6"
WECHAT_APPID, WECHAT_SECRET = "wx0123456789abcdef", "gw-real-wechat-secret-9Pq4"
REAL_TOKEN = "REAL-ACCESS-TOKEN-only-the-gateway-holds"


class FakeWechat:
    """api.weixin.qq.com: a token for the real appid/secret only, user info for that token only."""

    def __init__(self) -> None:
        self.http = FakeProvider()
        self.http.on("GET", "/cgi-bin/token", self.token)
        self.http.on("GET", "/cgi-bin/user/info", self.user_info)

    def token(self, seen: Seen) -> Reply:
        if (seen.query.get("appid"), seen.query.get("secret")) != (WECHAT_APPID, WECHAT_SECRET):
            return Reply(200, {"errcode": 40125, "errmsg": "invalid appsecret"})
        return Reply(200, {"access_token": REAL_TOKEN, "expires_in": 7200})

    def user_info(self, seen: Seen) -> Reply:
        if seen.query.get("access_token") != REAL_TOKEN:
            return Reply(200, {"errcode": 40001, "errmsg": "invalid credential"})
        return Reply(200, {"subscribe": 1, "openid": seen.query["openid"], "nickname": "Band"})


@pytest.fixture(scope="module")
def keys() -> AlipayKeys:
    return AlipayKeys()


@pytest.fixture(scope="module")
def fakes(keys: AlipayKeys) -> Iterator[tuple[FakeAlipay, FakeWechat]]:
    alipay, wechat = FakeAlipay(keys), FakeWechat()
    yield alipay, wechat
    alipay.http.close()
    wechat.http.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, keys: AlipayKeys,
       fakes: tuple[FakeAlipay, FakeWechat]) -> Iterator[Gateway]:
    alipay, wechat = fakes
    rules = tmp_path_factory.mktemp("shipped") / "rules"
    shutil.copytree(ROOT / "rules", rules)  # the shipped files, unchanged
    # One more app, for wechatpy: the shipped apps read the unified envelope or are address-based.
    (rules / "test-sdk-apps.yaml").write_text(textwrap.dedent(f"""
        apps:
          {WECHAT_SDK}: {{secret: "{WECHAT_SDK_SECRET}", allow: ["wechat.*"], envelope: raw}}
    """))
    env = {
        "ALIPAY_URL": alipay.http.url, "ALIPAY_APPID": ALIPAY_APPID, "ALIPAY_PRIVATE_KEY": keys.app_private,
        "ALIPAY_PUBLIC_KEY": keys.alipay_public, "PAYMENT_SERVICE_SECRET": PAYMENT_SECRET,
        "WECHAT_URL": wechat.http.url, "WECHAT_BACKUP_URL": wechat.http.url,
        "WECHAT_APPID": WECHAT_APPID, "WECHAT_SECRET": WECHAT_SECRET,
    }
    gateway = Gateway(rules, confdir, env=env).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch, gw: Gateway) -> Any:
    """The environment a legacy app is started with: HTTPS_PROXY and the CA (urllib's opener reset,
    as in a new process)."""

    def use(app: str, secret: str) -> None:
        for name in ("NO_PROXY", "no_proxy", "https_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", gw.proxy(app, secret))
        monkeypatch.setenv("SSL_CERT_FILE", gw.ca)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", gw.ca)
        monkeypatch.setattr(urllib.request, "_opener", None)

    return use


def test_python_alipay_sdk_with_the_shipped_rule(gw: Gateway, fakes: tuple[FakeAlipay, FakeWechat],
                                                 keys: AlipayKeys, sdk_env: Any) -> None:
    alipay, _ = fakes
    sdk_env("payment-service", PAYMENT_SECRET)
    before = len(alipay.http.hits())
    answer = alipay_client(keys).api_alipay_trade_query(out_trade_no="T-shipped-0001")  # sign verified by the SDK
    assert answer["code"] == "10000" and answer["out_trade_no"] == "T-shipped-0001"
    (seen,) = alipay.http.hits()[before:]
    assert seen.method == "GET" and seen.route == "/gateway.do"  # as python-alipay-sdk sends it
    assert seen.query["app_id"] == ALIPAY_APPID and alipay.refused == []
    line = wait_until(lambda: next((line for line in gw.log_lines() if line["service"] == "alipay"), None), 5,
                      what="the alipay access-log line")
    assert (line["method"], line["app"], line["code"]) == ("gateway", "payment-service", 0)


def test_wechatpy_with_the_shipped_rule(gw: Gateway, fakes: tuple[FakeAlipay, FakeWechat], sdk_env: Any) -> None:
    from wechatpy import WeChatClient

    _, wechat = fakes
    sdk_env(WECHAT_SDK, WECHAT_SDK_SECRET)
    client = WeChatClient(WECHAT_APPID, "placeholder-secret-the-app-keeps")
    user = client.user.get("o6_bmjrPTlm6_2sgVt7hMZOPfL2M")  # fetches its own token first, as always
    assert user == {"subscribe": 1, "openid": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "nickname": "Band"}
    hits = wechat.http.hits("/cgi-bin/user/info")
    assert hits and hits[-1].query["access_token"] == REAL_TOKEN
    # The app's own token request was answered by the gateway; WeChat saw only the gateway's.
    assert all(s.query.get("secret") == WECHAT_SECRET for s in wechat.http.hits("/cgi-bin/token"))
