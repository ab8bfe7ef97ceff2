"""WeChat Pay API v3 end to end (SPEC 17): a real gateway in front of a fake WeChat Pay on
127.0.0.1 that checks every request's WECHATPAY2-SHA256-RSA2048 signature with the merchant's
public key (refusing bad signatures, stale timestamps and replayed nonces, as WeChat Pay does) and
signs each answer with its platform key. The legacy app is an unmodified `wechatpayv3` SDK holding
a placeholder merchant key; it keeps verifying WeChat Pay's answers itself."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "shop", "shop-proxy-pass-4d1e"  # the wechatpayv3 SDK: WeChat Pay's bodies kept (raw)
OPS, OPS_SECRET = "ops", "ops-proxy-pass-8b2f"  # a plain HTTP client: the unified envelope
MCHID, SERIAL = "1900000109", "3775B6A45ACD588826D15E583A95F5DD00000000"
PUBKEY_ID = "PUB_KEY_ID_0119000001092024112300000000"
PH_SERIAL = "0000000000000000000000000000000000000000"  # what the app is configured with
HOST = "https://api.mch.weixin.qq.com"
SKEW = 300


def _pkcs8(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _spki(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Keys:
    """The merchant's real key (only the gateway has it), WeChat Pay's platform key, and the
    throwaway key the app is configured with."""

    def __init__(self) -> None:
        self.merchant, self.platform, self.placeholder = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
        self.merchant_pem, self.placeholder_pem = _pkcs8(self.merchant), _pkcs8(self.placeholder)
        self.platform_public_pem = _spki(self.platform)


_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (.*)$')
_PAIR = re.compile(r'(\w+)="([^"]*)"')


class FakeWechatPay:
    """api.mch.weixin.qq.com: verifies each request as WeChat Pay does, answers signed with the
    platform key through wechatpayv3's own RSA code. `out_trade_no` picks a scenario."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.http = FakeProvider()
        self.lock = threading.Lock()
        self.nonces: set[str] = set()
        self.refused: list[str] = []
        self.flaky_calls = 0
        self.http.on("POST", "/v3/pay/transactions/native", self.native)
        self.http.on("POST", "/v3/pay/transactions/jsapi", self.native)
        for order in ("T-1001", "T-1002"):
            self.http.on("GET", f"/v3/pay/transactions/out-trade-no/{order}", self.query)
            self.http.on("POST", f"/v3/pay/transactions/out-trade-no/{order}/close", self.close)
        self.http.on("GET", "/v3/flaky", self.flaky)

    def check(self, seen: Seen) -> str | None:
        """Why WeChat Pay would refuse the request's signature, or None."""
        found = _AUTH.match(seen.headers.get("authorization", ""))
        if found is None:
            return "no WECHATPAY2-SHA256-RSA2048 authorization"
        fields = dict(_PAIR.findall(found.group(1)))
        if fields.get("mchid") != MCHID or fields.get("serial_no") != SERIAL:
            return "unknown merchant or certificate serial"
        message = (f"{seen.method}\n{seen.path}\n{fields.get('timestamp')}\n{fields.get('nonce_str')}\n".encode()
                   + seen.body + b"\n")
        try:
            self.keys.merchant.public_key().verify(base64.b64decode(fields.get("signature", "")), message,
                                                   padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "signature does not verify with the merchant's public key"
        if abs(time.time() - int(fields.get("timestamp") or 0)) > SKEW:
            return "timestamp expired"
        with self.lock:
            if fields["nonce_str"] in self.nonces:
                return "nonce replayed"
            self.nonces.add(fields["nonce_str"])
        return None

    def signed(self, status: int, body: bytes, *, at: float | None = None, tamper: bool = False,
               unsigned: bool = False) -> Reply:
        from wechatpayv3.utils import rsa_sign

        ts, nonce = str(int(at if at is not None else time.time())), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
        signature = rsa_sign(self.keys.platform, f"{ts}\n{nonce}\n{body.decode()}\n")
        if tamper:  # changed after signing, as by a man in the middle
            body = body.replace(b'"total": 100', b'"total": 1')
        headers = {"Content-Type": "application/json; charset=utf-8", "Request-ID": "08F78BB5AF0610D302"}
        if not unsigned:
            headers.update({"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
                            "Wechatpay-Serial": PUBKEY_ID, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"})
        if status == 204:
            headers.pop("Content-Type")
        return Reply(status, body, headers)

    def refuse(self, seen: Seen) -> Reply | None:
        why = self.check(seen)
        if why is None:
            return None
        with self.lock:
            self.refused.append(why)
        return self.signed(401, json.dumps({"code": "SIGN_ERROR", "message": "签名错误"}).encode())

    def native(self, seen: Seen) -> Reply:
        if (refusal := self.refuse(seen)) is not None:
            return refusal
        order = seen.json().get("out_trade_no", "")
        if order.startswith("ERR-"):
            _, code, status = order.split("-")
            return self.signed(int(status), json.dumps({"code": code, "message": "出错了 provider words"}).encode())
        body = json.dumps({"code_url": "weixin://wxpay/bizpayurl?pr=p4lpSuKzz", "out_trade_no": order,
                           "amount": {"total": 100}, "payer_phone": "13812345678"}).encode()
        if order == "STALE":
            return self.signed(200, body, at=time.time() - 600)
        return self.signed(200, body, tamper=order == "TAMPERED", unsigned=order == "UNSIGNED")

    def query(self, seen: Seen) -> Reply:
        if (refusal := self.refuse(seen)) is not None:
            return refusal
        order = seen.route.rsplit("/", 1)[1]
        return self.signed(200, json.dumps({"mchid": seen.query["mchid"], "out_trade_no": order,
                                            "trade_state": "SUCCESS", "amount": {"total": 100}}).encode())

    def close(self, seen: Seen) -> Reply:
        if (refusal := self.refuse(seen)) is not None:
            return refusal
        return self.signed(204, b"")

    def flaky(self, seen: Seen) -> Reply:
        if (refusal := self.refuse(seen)) is not None:
            return refusal
        with self.lock:
            self.flaky_calls += 1
            first = self.flaky_calls == 1
        if first:  # answered after a second, so the retry is signed in a later second
            return Reply(503, {"code": "SYSTEM_ERROR", "message": "busy"}, delay=1.1)
        return self.signed(200, b'{"ok": true}')


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def wxpay(keys: Keys) -> Iterator[FakeWechatPay]:
    fake = FakeWechatPay(keys)
    yield fake
    fake.http.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, wxpay: FakeWechatPay, keys: Keys) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("wechatpay")
    rules = write_rules(tmp / "rules", {
        "wechatpay.yaml": f"""
            service: wechatpay
            hosts: [api.mch.weixin.qq.com]
            upstream: {{url: "{wxpay.http.url}", timeout: 5s}}
            credentials:
              type: wechatpay_v3
              mch_id: "{MCHID}"
              serial_no: "${{WXPAY_CERT_SERIAL}}"
              private_key: file:keys/apiclient_key.pem
              platform_public_key: "${{WXPAY_PUBLIC_KEY}}"
              platform_public_key_id: "${{WXPAY_PUBKEY_ID}}"
            envelope: wechatpay_v3
            retry: {{attempts: 2, backoff: 50ms, max_backoff: 200ms, deadline: 10s, on: [503], methods: [GET]}}
            methods:
              query: {{method: GET, path: "/v3/pay/transactions/out-trade-no/{{out_trade_no}}"}}
              native: {{method: POST, path: /v3/pay/transactions/native}}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: "${{SHOP_APP_SECRET}}", envelope: raw}}
              {OPS}: {{secret: "${{OPS_APP_SECRET}}"}}
            gateway: {{require_app: true, unknown_hosts: deny}}
        """,
    })
    (rules / "keys").mkdir()
    (rules / "keys" / "apiclient_key.pem").write_text(keys.merchant_pem)
    env = {"WXPAY_CERT_SERIAL": SERIAL, "WXPAY_PUBLIC_KEY": keys.platform_public_pem, "WXPAY_PUBKEY_ID": PUBKEY_ID,
           "SHOP_APP_SECRET": APP_SECRET, "OPS_APP_SECRET": OPS_SECRET}
    gateway = Gateway(rules, confdir, env=env).start()
    yield gateway
    gateway.stop()


def sdk(keys: Keys, gw: Gateway | None, monkeypatch: pytest.MonkeyPatch, serial: str = PH_SERIAL) -> Any:
    """wechatpayv3 as the shop has it: the real mchid, a placeholder key and serial, and WeChat Pay's
    public key (public, so the SDK keeps verifying answers); the gateway as its HTTPS proxy."""
    from wechatpayv3 import WeChatPay, WeChatPayType

    if gw is not None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", gw.ca)
    client = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID, private_key=keys.placeholder_pem,
                       cert_serial_no=serial, appid="wxd678efh567hg6787", apiv3_key="0" * 32,
                       notify_url="https://shop.example/notify", timeout=15, public_key=keys.platform_public_pem,
                       public_key_id=PUBKEY_ID, proxy={"https": gw.proxy(APP, APP_SECRET)} if gw else None)
    return client


def ops_post(gw: Gateway, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(HOST + path, json=body, proxies=gw.proxies(OPS, OPS_SECRET), verify=gw.ca, timeout=15)


def pem_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_unmodified_sdk_with_a_placeholder_key(gw: Gateway, wxpay: FakeWechatPay, keys: Keys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Straight to the fake, the SDK's placeholder signature is refused: the fake's check has teeth.
    # Even under the real certificate serial, the placeholder key's signature does not verify.
    for serial in (PH_SERIAL, SERIAL):
        direct = sdk(keys, None, monkeypatch, serial)
        direct._core._gate_way = wxpay.http.url
        status, _ = direct.query(out_trade_no="T-1001")
        assert status == 401
    assert wxpay.refused == ["unknown merchant or certificate serial",
                             "signature does not verify with the merchant's public key"]
    wxpay.refused.clear()

    client = sdk(keys, gw, monkeypatch)
    # The SDK verified WeChat Pay's signature itself (it raises otherwise): headers and body byte for byte.
    status, text = client.query(out_trade_no="T-1001")
    assert status == 200 and json.loads(text) == {"mchid": MCHID, "out_trade_no": "T-1001",
                                                  "trade_state": "SUCCESS", "amount": {"total": 100}}
    status, text = client.pay(description="图书", out_trade_no="T-1002", amount={"total": 100})
    assert status == 200 and json.loads(text)["code_url"].startswith("weixin://")
    status, text = client.close(out_trade_no="T-1002")  # 204, signed over an empty body
    assert status == 204 and text == b""
    assert wxpay.refused == []
    sent = wxpay.http.hits()[-3:]
    assert all(PH_SERIAL not in s.headers["authorization"] and f'serial_no="{SERIAL}"' in s.headers["authorization"]
               for s in sent)
    assert sent[1].json()["description"] == "图书"  # the body went on as the SDK wrote it


def test_unified_caller_gets_the_envelope(gw: Gateway, wxpay: FakeWechatPay) -> None:
    r = ops_post(gw, "/v3/pay/transactions/jsapi", {"out_trade_no": "T-2001", "amount": {"total": 100}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0 and body["data"]["out_trade_no"] == "T-2001" and body["message"] == "success"
    assert wxpay.refused == []
    closed = requests.post(HOST + "/v3/pay/transactions/out-trade-no/T-1001/close", json={"mchid": MCHID},
                           proxies=gw.proxies(OPS, OPS_SECRET), verify=gw.ca, timeout=15)
    assert closed.status_code == 200 and closed.json()["code"] == 0 and closed.json()["data"] is None


def test_explicit_form_calls_are_signed_over_what_is_sent(gw: Gateway, wxpay: FakeWechatPay) -> None:
    proxies = gw.proxies(OPS, OPS_SECRET)
    r = requests.get(f"http://gateway.local/wechatpay/query?out_trade_no=T-1001&mchid={MCHID}", proxies=proxies,
                     timeout=15)
    assert r.status_code == 200 and r.json()["data"]["out_trade_no"] == "T-1001", r.text
    seen = wxpay.http.hits("/v3/pay/transactions/out-trade-no/T-1001")[-1]
    assert seen.path == f"/v3/pay/transactions/out-trade-no/T-1001?mchid={MCHID}"  # what the fake verified
    body = '{"out_trade_no": "T-3001", "description": "咖啡 x2"}'.encode()
    r = requests.post("http://gateway.local/wechatpay/native", data=body, proxies=proxies, timeout=15,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["data"]["out_trade_no"] == "T-3001", r.text
    assert wxpay.http.hits("/v3/pay/transactions/native")[-1].body == body
    assert wxpay.refused == []


@pytest.mark.parametrize("order", ["TAMPERED", "STALE", "UNSIGNED"])
def test_an_answer_that_does_not_verify_is_1004_for_every_caller(gw: Gateway, wxpay: FakeWechatPay, keys: Keys,
                                                                 order: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = ops_post(gw, "/v3/pay/transactions/native", {"out_trade_no": order, "amount": {"total": 100}})
    assert r.status_code == 502 and r.json()["code"] == -1004 and r.json()["source"] == "upstream"
    assert "code_url" not in r.text and "bizpayurl" not in r.text  # the answer never reaches the caller
    line = gw.log_for(r.headers["X-Request-ID"])
    assert line["code"] == -1004 and line["service"] == "wechatpay"
    why = {"TAMPERED": "does not match", "STALE": "300s off", "UNSIGNED": "no Wechatpay-Signature"}[order]
    assert why in line["error"]
    assert "bizpayurl" in line["error"]  # the raw answer is in the log, redacted:
    assert "13812345678" not in line["error"] and "1381234****" in line["error"]

    # A raw caller is no exception: the SDK would check, but a plain raw client may not.
    client = sdk(keys, gw, monkeypatch)
    status, text = client.pay(description="x", out_trade_no=order, amount={"total": 100})
    assert status == 502 and json.loads(text)["code"] == -1004 and "bizpayurl" not in text
    assert wxpay.refused == []  # the gateway's requests were fine; the answers were not


@pytest.mark.parametrize(("code", "status", "gateway_code", "http"), [
    ("SIGN_ERROR", 401, -1002, 502),
    ("PARAM_ERROR", 400, -2005, 400),
    ("INVALID_REQUEST", 400, -2005, 400),
    ("FREQUENCY_LIMITED", 429, -1005, 503),
    ("SYSTEM_ERROR", 500, -1003, 503),
])
def test_each_error_code_through_the_gateway(gw: Gateway, code: str, status: int, gateway_code: int,
                                             http: int) -> None:
    r = ops_post(gw, "/v3/pay/transactions/native", {"out_trade_no": f"ERR-{code}-{status}"})
    body = r.json()
    assert (r.status_code, body["code"]) == (http, gateway_code)
    assert r.headers["X-Gateway-Code"] == str(gateway_code) and code in body["message"]
    assert "provider words" not in body["message"]
    assert "provider words" in gw.log_for(r.headers["X-Request-ID"])["error"]


def test_every_attempt_is_signed_afresh(gw: Gateway, wxpay: FakeWechatPay) -> None:
    before = len(wxpay.http.hits("/v3/flaky"))
    r = requests.get(HOST + "/v3/flaky", proxies=gw.proxies(OPS, OPS_SECRET), verify=gw.ca, timeout=15)
    assert r.status_code == 200 and r.json()["data"] == {"ok": True}
    first, second = wxpay.http.hits("/v3/flaky")[before:]
    stamps = [dict(_PAIR.findall(s.headers["authorization"])) for s in (first, second)]
    assert stamps[0]["nonce_str"] != stamps[1]["nonce_str"]  # the fake refuses a replayed nonce
    assert int(stamps[1]["timestamp"]) > int(stamps[0]["timestamp"])
    assert wxpay.refused == []


def test_no_key_in_the_log_or_the_output(gw: Gateway, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk(keys, gw, monkeypatch).query(out_trade_no="T-1001")
    ops_post(gw, "/v3/pay/transactions/native", {"out_trade_no": "TAMPERED"})
    pages = [requests.get(gw.admin + page, timeout=10) for page in ("/status", "/metrics")]
    assert all(page.status_code == 200 for page in pages) and "wechatpay" in pages[0].text
    text = gw.output() + json.dumps(gw.log_lines()) + "".join(page.text for page in pages)
    for line in pem_lines(keys.merchant_pem) + pem_lines(keys.placeholder_pem):
        assert line not in text
    assert "signature=" not in text
