"""Redaction (SPEC 10): personal numbers, secret-named values, known secrets, the operator's rules."""

from __future__ import annotations

import json
import time

import pytest
from multidict import CIMultiDict

from addons.redact import Redactor, is_secret_name, luhn_ok
from addons.rules.schema import RedactRule


@pytest.fixture
def r() -> Redactor:
    return Redactor()


# -- names --

@pytest.mark.parametrize("name", [
    "access_token", "token", "secret", "password", "sign", "signature", "key", "authorization",
    "proxy-authorization", "cookie", "x-api-key", "client_secret", "app_secret",
    "Authorization", "X-Api-Key", "APP_SECRET", "refresh_token", "session_key", "secret_key",
    "accessToken", "appSecret", "paySign", "apiKey", "X-Amz-Security-Token", "Set-Cookie", "api_key2",
    "passwd", "private_key",
])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "monkey", "keyword", "keyboard", "keys", "signal", "design", "tokenizer", "passport",
    "sign_type", "signType", "token_type", "key_id", "secret_id", "token_url", "signature_version",
    "expires_in", "openid", "nonce_str", "Content-Type", "hotkey",
])
def test_harmless_names(name: str) -> None:
    assert not is_secret_name(name)


# -- numbers --

@pytest.mark.parametrize(("text", "expected"), [
    ("13812345678", "1381234****"),
    ("联系电话:13812345678。", "联系电话:1381234****。"),
    ("手机13812345678", "手机1381234****"),
    ("mobile=19912345678&x=1", "mobile=1991234****&x=1"),
    ("+8613812345678", "+861381234****"),
    ("+86 138 1234 5678", "+86 138 1234 ****"),
    ("call 138-1234-5678 now", "call 138-1234-**** now"),
    ('{"phone":"15712345678"}', '{"phone":"1571234****"}'),
])
def test_mobile_numbers_keep_first_7(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("身份证11010519491231002X", "身份证110105********002X"),
    ("id_card=440308199001011234&n=1", "id_card=440308********1234&n=1"),
    ("idcard 11010519491231002x.", "idcard 110105********002x."),
])
def test_id_cards_keep_first_6_and_last_4(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("card 6222021234567890128", "card ***************0128"),
    ("卡号6217000123456789019", "卡号***************9019"),
    ("4532015112830366", "************0366"),
    ("card 4532 0151 1283 0366", "card **** **** **** 0366"),
    ("6228-4800-1234-5671", "****-****-****-5671"),
])
def test_bank_cards_keep_last_4(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize("text", [
    "ts=1716280000",  # unix timestamp, 10 digits
    "ts=1716280000123",  # milliseconds, 13 digits, fails Luhn
    "out_trade_no=2024052112345678",  # order id, fails Luhn
    "transaction_id=4200001234202405211234567890",  # 28 digits: no card or ID is that long
    "trade_no 202405211234567890",  # 18 digits without a birth date where an ID has one
    "openid=oLVPpjqs9BhvzwPj5A13812345678",  # digits glued to an id
    "sha256=3a7bd3e2360a3d2913812345678ff",
    "lat=0.13812345678",  # decimals of a float
    "1234 5678",  # two groups are no card
    "12345678901",  # 11 digits that are no mobile number
])
def test_numbers_that_are_not_personal_stay(r: Redactor, text: str) -> None:
    assert r.text(text) == text


def test_luhn() -> None:
    assert luhn_ok("4532015112830366") and luhn_ok("6222021234567890128")
    assert not luhn_ok("4532015112830367") and not luhn_ok("1716280000123")


# -- secret-named values in text --

@pytest.mark.parametrize(("text", "expected"), [
    ("access_token=ACCESS_TOKEN_VALUE&openid=o1", "access_token=***&openid=o1"),
    ('{"access_token":"abc.def","expires_in":7200}', '{"access_token":"***","expires_in":7200}'),
    ("{'password': 'hunter2', 'user': 'bob'}", "{'password': '***', 'user': 'bob'}"),
    ("password: hunter2, user: bob", "password: ***, user: bob"),
    ("X-Api-Key: 9f8e7d6c5b4a", "X-Api-Key: ***"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Authorization: ***"),
    ("retrying with bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "retrying with bearer ***"),
    ("Cookie: lang=zh; session=abcdef123", "Cookie: ***"),
    ('"client_secret": "s3cr3t\\"quoted"', '"client_secret": "***"'),
    ("app_secret=abc sign=XYZ== sign_type=RSA2", "app_secret=*** sign=*** sign_type=RSA2"),
    ("<xml><sign><![CDATA[7921E432F65EB8ED]]></sign><appid>wx1</appid></xml>",
     "<xml><sign>***</sign><appid>wx1</appid></xml>"),
])
def test_secret_named_values(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize("text", [
    "monkey=banana keyword=weather keyboard: qwerty",
    "token_type=Bearer expires_in=7200 key_id=k1",
    "please sign in to continue",
    "invalid credential, access_token is invalid or not latest rid: 6543a1b2-0b9e1f6c",
])
def test_harmless_text_stays(r: Redactor, text: str) -> None:
    assert r.text(text) == text


# -- known secret values --

def test_registered_secrets_are_masked_anywhere() -> None:
    r = Redactor()
    token = "78_Kx9fWqZ0r-ABCDEFGH/ij+kl="
    r.add_secret(token)
    r.add_secret("short")  # too short to mask safely: ignored
    assert r.text(f"upstream said: invalid {token}!") == "upstream said: invalid ***!"
    encoded = "78_Kx9fWqZ0r-ABCDEFGH%2Fij%2Bkl%3D"
    assert r.url(f"https://api.example.com/v1/{token}?state={encoded}") == "https://api.example.com/v1/***?state=***"
    assert r.text("a short word") == "a short word"
    r.discard_secret(token)
    assert token in r.text(token)


def test_many_registered_secrets_stay_fast() -> None:
    r = Redactor()
    for i in range(3000):
        r.add_secret(f"tok{i:08d}-secret-{i * 7919:x}")
    r.add_secret("-----BEGIN PRIVATE KEY-----\n" + "A" * 3000 + "\n-----END PRIVATE KEY-----")
    line = "GET /cgi-bin/user/info?openid=oLVPpjqs9BhvzwPj5A-vTYAX3GLc&lang=zh_CN " * 4
    assert r.text(line) == line
    assert r.text(f"x tok00001234-secret-{1234 * 7919:x} y") == "x *** y"
    start = time.perf_counter()
    for _ in range(2000):
        r.text(line)
    assert time.perf_counter() - start < 2.0  # about 10 µs a call in practice; generous for slow CI


def test_registering_again_keeps_a_secret_from_eviction(monkeypatch: pytest.MonkeyPatch) -> None:
    import addons.redact as redact

    monkeypatch.setattr(redact, "MAX_SECRETS", 10)
    r = Redactor()
    r.add_secret("long-lived-key")
    for i in range(20):
        r.add_secret(f"rotating-token-{i:04d}")
        r.add_secret("long-lived-key")
    assert r.secret_count <= 10
    assert r.text("long-lived-key rotating-token-0019 rotating-token-0000") == "*** *** rotating-token-0000"


# -- URLs, headers, JSON, bodies --

def test_url(r: Redactor) -> None:
    url = ("https://api.weixin.qq.com/cgi-bin/user/info?access_token=78_abcDEF&openid=o6_bmjrPTlm6"
           "&mobile=13812345678&keyword=phone&sign_type=RSA2&q=%E6%89%8B%E6%9C%BA13812345678")
    assert r.url(url) == ("https://api.weixin.qq.com/cgi-bin/user/info?access_token=***&openid=o6_bmjrPTlm6"
                          "&mobile=1381234****&keyword=phone&sign_type=RSA2&q=%E6%89%8B%E6%9C%BA1381234****")


def test_url_userinfo_path_and_plain(r: Redactor) -> None:
    assert r.url("http://order-service:s3cret@gw.internal:8080/x") == "http://order-service:***@gw.internal:8080/x"
    assert r.url("https://api.example.com/users/13812345678/orders") == \
        "https://api.example.com/users/1381234****/orders"
    plain = "https://restapi.amap.com/v3/geocode/geo?address=beijing&city=010&ts=1716280000"
    assert r.url(plain) == plain
    assert r.url("https://x.example/?X-Api-Key=abc&Key=abc") == "https://x.example/?X-Api-Key=***&Key=***"


def test_headers(r: Redactor) -> None:
    headers = CIMultiDict([("Authorization", "Bearer abc"), ("Proxy-Authorization", "Basic b3JkZXI6czNjcmV0"),
                           ("Cookie", "a=b"), ("Cookie", "c=d"), ("X-Api-Key", "k"),
                           ("Content-Type", "application/json"), ("X-User-Phone", "13812345678"),
                           ("X-Keyword", "weather")])
    assert r.headers(headers) == {
        "Authorization": "***", "Proxy-Authorization": "***", "Cookie": "***, ***", "X-Api-Key": "***",
        "Content-Type": "application/json", "X-User-Phone": "1381234****", "X-Keyword": "weather",
    }


def test_json_value(r: Redactor) -> None:
    obj = {"user": {"mobile": "13812345678", "password": "p4ss", "name": "张三"},
           "credentials": {"client_id": "c", "client_secret": "s"}, "items": [{"sign": 1}, "卡6222021234567890128"],
           "sign_type": "RSA2", "count": 3}
    assert r.json_value(obj) == {"user": {"mobile": "1381234****", "password": "***", "name": "张三"},
                                 "credentials": "***", "items": [{"sign": "***"}, "卡***************0128"],
                                 "sign_type": "RSA2", "count": 3}


def test_json_value_deep_nesting_is_masked_not_crashing(r: Redactor) -> None:
    deep: object = "13812345678"
    for _ in range(5000):
        deep = [deep]
    assert json.dumps(r.json_value(deep)).count("***") == 1


def test_body_json_and_form_and_text(r: Redactor) -> None:
    body = '{"touser":"OPENID","msgtype":"text","text":{"content":"验证码发送至13812345678"},"access_token":"T"}'
    assert r.body("application/json; charset=utf-8", body.encode()) == \
        '{"touser":"OPENID","msgtype":"text","text":{"content":"验证码发送至1381234****"},"access_token":"***"}'
    form = b"app_id=2014072300007148&method=alipay.trade.query&sign=ERITJKEIJKJHKKKK%2B%3D&biz=13812345678"
    assert r.body("application/x-www-form-urlencoded", form) == \
        "app_id=2014072300007148&method=alipay.trade.query&sign=***&biz=1381234****"
    assert r.body("text/plain", b"token=abc 13812345678") == "token=*** 1381234****"
    assert r.body("application/json", b'{"password": broken') == '{"password": ***'
    assert r.body("application/json", b"") == ""


# -- the operator's rules --

def test_extra_rules_from_gateway_yaml() -> None:
    r = Redactor([RedactRule(pattern=r"\b\d{6}(?=@)", replace="******"),
                  RedactRule(pattern=r"ORDER-[A-Z0-9]+", replace=r"ORDER-\1")])  # replace is literal
    assert r.text("mail 123456@example.com") == "mail ******@example.com"
    assert r.text("ref ORDER-AB12") == r"ref ORDER-\1"
    assert r.url("https://x.example/?to=123456@example.com") == "https://x.example/?to=******@example.com"


def test_empty_and_fast_path(r: Redactor) -> None:
    assert r.text("") == ""
    assert r.url("") == ""
    line = "wechat.send_msg: upstream timed out after 3 attempts"
    assert r.text(line) is line  # nothing to do: the very same object comes back


def test_fuzz_never_raises_and_stays_linear(r: Redactor) -> None:
    import random

    rng = random.Random(99)
    alphabet = "aAkKeyYtoken=:\"'&;,<>/_-. \n%0123456789X+[]!CDATA手机"
    r.add_secret("known-secret-value")
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        assert isinstance(r.text(s), str)
        assert isinstance(r.url("https://x.example/p?" + s), str)
        assert isinstance(r.body("application/x-www-form-urlencoded", s.encode()), str)
        assert isinstance(r.body("application/json", s.encode()), str)
        assert isinstance(r.headers({s: s}), dict)
    start = time.perf_counter()
    for hostile in ("A" * 100_000 + "b", "bearer " + "A" * 100_000 + "=B", "<sign><![CDATA[" * 10_000,
                    "1234 " * 20_000, 'password="' + "a" * 100_000):
        r.text(hostile)
        r.url("http://x/?" + hostile)
    assert time.perf_counter() - start < 5.0  # each is about 0.1 s; quadratic would be hours
