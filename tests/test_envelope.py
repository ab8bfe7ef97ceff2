"""Envelope adapters (SPEC 5): every code-table row an adapter produces, unreadable answers, rendering."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from multidict import CIMultiDict

from addons.envelope import ProviderAnswer, Verdict, make_adapter, render
from addons.errors import http_status
from addons.redact import Redactor
from addons.rules.schema import JsonEnvelope, NamedEnvelope

RULE = "svc.call"


def answer(body: Any, status: int = 200, content_type: str = "application/json") -> ProviderAnswer:
    if not isinstance(body, bytes):
        body = json.dumps(body, ensure_ascii=False).encode()
    return ProviderAnswer(status, CIMultiDict({"Content-Type": content_type}), body)


def xml_answer(text: str, status: int = 200) -> ProviderAnswer:
    return ProviderAnswer(status, CIMultiDict({"Content-Type": "text/xml"}), text.encode())


def classify(envelope: Any, body: Any, status: int = 200, rule: str = RULE) -> Verdict:
    return make_adapter(envelope).classify(answer(body, status), rule)


def assert_error(verdict: Verdict, code: int) -> None:
    assert verdict.code == code, verdict
    assert verdict.data is None
    assert verdict.message.startswith(f"{RULE}: "), verdict.message


# -- provider HTTP status, for every adapter --

ENVELOPES = ["wechat", "alipay", "json", "xml", "raw",
             JsonEnvelope(type="json", success_field="status", success_values=["1"], message_field="info")]


@pytest.mark.parametrize("envelope", ENVELOPES, ids=str)
@pytest.mark.parametrize(("status", "code"), [
    (401, -1002), (403, -1002), (400, -2005), (404, -2005), (422, -2005), (429, -1005),
    (503, -1003), (500, -1000), (502, -1000), (504, -1000), (409, -1000), (418, -1000),
])
def test_http_status_decides_before_the_body(envelope: Any, status: int, code: int) -> None:
    verdict = make_adapter(envelope).classify(
        answer(b"<html><body>nginx internal-lb-7.corp: 500</body></html>", status, "text/html"), RULE)
    assert_error(verdict, code)
    assert f"HTTP {status}" in verdict.message
    assert "internal-lb-7.corp" not in verdict.message  # the body goes to the log only
    assert "internal-lb-7.corp" in verdict.detail


def test_http_error_detail_reads_the_providers_code() -> None:
    verdict = classify("wechat", {"errcode": 40001, "errmsg": "invalid credential"}, status=500)
    assert verdict.code == -1000
    assert verdict.detail == "HTTP 500: errcode=40001 errmsg=invalid credential"
    assert verdict.provider_code == "40001"


@pytest.mark.parametrize("status", [200, 201, 204, 302, 304])
def test_2xx_and_3xx_are_judged_by_the_body(status: int) -> None:
    assert classify("json", {"ok": True}, status=status).code == 0
    assert classify("wechat", {"errcode": 40003, "errmsg": "invalid openid"}, status=status).code == -2005


# -- wechat --

def test_wechat_success_strips_errcode_and_errmsg() -> None:
    verdict = classify("wechat", {"errcode": 0, "errmsg": "ok", "msgid": 200228332})
    assert (verdict.code, verdict.message, verdict.data) == (0, "success", {"msgid": 200228332})


def test_wechat_absent_errcode_is_success() -> None:
    body = {"subscribe": 1, "openid": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "nickname": "Band", "language": "zh_CN"}
    verdict = classify("wechat", body)
    assert verdict.code == 0 and verdict.data == body


@pytest.mark.parametrize(("errcode", "errmsg", "code"), [
    (40001, "invalid credential, access_token is invalid or not latest rid: 6543a1b2-0b9e1f6c", -1002),
    (40014, "invalid access_token rid: 6543a1b2-1c2d3e4f", -1002),
    (42001, "access_token expired rid: 6543a1b2-5a6b7c8d", -1002),
    (41001, "access_token missing rid: 6543a1b2-9e8f7a6b", -1002),
    (45009, "reach max api daily quota limit rid: 6543a1b2-11223344", -1005),
    (45011, "api minute-quota reach limit  mustslower  retry next minute", -1005),
    (-1, "system error", -1003),
    (40003, "invalid openid rid: 6543a1b2-55667788", -2005),
    (47001, "data format error rid: 6543a1b2-99aabbcc", -2005),
])
def test_wechat_codes(errcode: int, errmsg: str, code: int) -> None:
    verdict = classify("wechat", {"errcode": errcode, "errmsg": errmsg})
    assert_error(verdict, code)
    assert verdict.provider_code == str(errcode)
    assert f"errcode {errcode}" in verdict.message
    assert errmsg not in verdict.message and "rid:" not in verdict.message
    assert verdict.detail == f"errcode={errcode} errmsg={errmsg}"


def test_wechat_errcode_as_string_is_read() -> None:
    assert classify("wechat", {"errcode": "40001", "errmsg": "invalid credential"}).provider_code == "40001"


@pytest.mark.parametrize("body", [
    [{"errcode": 0}], {"errcode": "abc"}, {"errcode": True}, {"errcode": {"x": 1}}, "ok", 3,
])
def test_wechat_wrong_shapes_are_unreadable(body: Any) -> None:
    assert_error(classify("wechat", body), -1004)


# -- alipay --

ALIPAY_SIGN = "ERITJKEIJKJHKKKKKKKHJEREEEEEEEEEEE" * 8


def alipay(obj: dict[str, Any], name: str = "alipay_trade_query_response") -> dict[str, Any]:
    return {name: obj, "sign": ALIPAY_SIGN}


def test_alipay_success_data_is_the_response_object() -> None:
    verdict = classify("alipay", alipay({
        "code": "10000", "msg": "Success", "trade_no": "2013112011001004330000121536",
        "out_trade_no": "6823789339978248", "buyer_logon_id": "159****5620", "trade_status": "TRADE_SUCCESS",
        "total_amount": "88.88",
    }))
    assert verdict.code == 0 and verdict.message == "success"
    assert verdict.data["trade_status"] == "TRADE_SUCCESS"
    assert "code" not in verdict.data and "msg" not in verdict.data
    assert ALIPAY_SIGN not in json.dumps(verdict.data)


@pytest.mark.parametrize(("code", "msg", "sub_code", "sub_msg", "expected"), [
    ("20000", "Service Currently Unavailable", "isp.unknow-error", "系统繁忙", -1003),
    ("20001", "Insufficient Token Permissions", "aop.invalid-auth-token", "无效的访问令牌", -1002),
    ("40006", "Insufficient Permissions", "isv.insufficient-isv-permissions", "ISV权限不足", -1002),
    ("40003", "Insufficient Conditions", "isv.missing-signature-config", "验签配置缺失", -1000),
])
def test_alipay_codes(code: str, msg: str, sub_code: str, sub_msg: str, expected: int) -> None:
    verdict = classify("alipay", alipay({"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}))
    assert_error(verdict, expected)
    assert verdict.provider_code == f"{code}/{sub_code}"
    assert sub_msg not in verdict.message and msg not in verdict.message  # not the caller's to fix
    assert sub_msg in verdict.detail


@pytest.mark.parametrize(("code", "sub_code", "sub_msg"), [
    ("40001", "isv.missing-method", "缺少方法名参数"),
    ("40002", "isv.invalid-app-id", "无效的AppID参数"),
    ("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在"),
])
def test_alipay_caller_errors_name_sub_msg(code: str, sub_code: str, sub_msg: str) -> None:
    verdict = classify("alipay", alipay({"code": code, "msg": "Business Failed", "sub_code": sub_code,
                                         "sub_msg": sub_msg}))
    assert_error(verdict, -2005)
    assert sub_msg in verdict.message
    assert verdict.provider_code == f"{code}/{sub_code}"


def test_alipay_error_response_and_sub_code_when_no_sub_msg() -> None:
    verdict = classify("alipay", alipay({"code": "40002", "msg": "Invalid Arguments",
                                         "sub_code": "isv.invalid-signature-type"}, "error_response"))
    assert_error(verdict, -2005)
    assert "isv.invalid-signature-type" in verdict.message


def test_alipay_sub_msg_is_redacted_and_short() -> None:
    sub_msg = "手机号13812345678格式错误 app_secret=topsecretvalue " + "x" * 1000
    verdict = classify("alipay", alipay({"code": "40004", "msg": "Business Failed", "sub_code": "X",
                                         "sub_msg": sub_msg}))
    assert "13812345678" not in verdict.message and "topsecretvalue" not in verdict.message
    assert len(verdict.message) < 400


def test_alipay_sub_msg_masks_secrets_the_gateway_registered() -> None:
    redactor = Redactor()
    redactor.add_secret("MIIEvQIBADANBgkq")
    adapter = make_adapter("alipay", redactor)
    body = alipay({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.x",
                   "sub_msg": "bad key MIIEvQIBADANBgkq"})
    verdict = adapter.classify(answer(body), RULE)
    assert "MIIEvQIBADANBgkq" not in verdict.message


@pytest.mark.parametrize("body", [
    {"sign": "abc"},  # no *_response
    {"a_response": {"code": "10000"}, "b_response": {"code": "10000"}},  # two, none an error
    {"alipay_trade_query_response": "10000"},
    {"alipay_trade_query_response": {"msg": "Success"}},  # no code
    [alipay({"code": "10000"})],
])
def test_alipay_wrong_shapes_are_unreadable(body: Any) -> None:
    assert_error(classify("alipay", body), -1004)


# -- json --

def test_plain_json_data_is_the_whole_body() -> None:
    assert classify("json", {"id": 7, "name": "x"}).data == {"id": 7, "name": "x"}
    assert classify("json", [1, 2, 3]).data == [1, 2, 3]  # plain json takes any JSON value
    assert classify(NamedEnvelope(type="raw"), b"x").code == 0


def test_plain_json_empty_body_is_null_data() -> None:
    verdict = make_adapter("json").classify(answer(b"", 204), RULE)
    assert (verdict.code, verdict.data) == (0, None)


AMAP = JsonEnvelope(type="json", success_field="status", success_values=["1"], message_field="info",
                    data_field=None, codes={"10001": -1002, "10003": -1005, "20000": -2005})


def test_configured_json_success() -> None:
    geocode = {"formatted_address": "北京市朝阳区阜通东大街6号", "location": "116.482086,39.990496"}
    body = {"status": "1", "info": "OK", "infocode": "10000", "count": "1", "geocodes": [geocode]}
    verdict = classify(AMAP, body)
    assert verdict.code == 0 and verdict.data == body


@pytest.mark.parametrize(("status", "info", "code"), [
    ("10001", "INVALID_USER_KEY", -1002),
    ("10003", "DAILY_QUERY_OVER_LIMIT", -1005),
    ("99999", "UNKNOWN_ERROR", -1000),
])
def test_configured_json_codes(status: str, info: str, code: int) -> None:
    verdict = classify(AMAP, {"status": status, "info": info})
    assert_error(verdict, code)
    assert verdict.provider_code == status
    assert info not in verdict.message  # provider's words only for the caller's own faults
    assert info in verdict.detail


def test_configured_json_caller_fault_quotes_message_field() -> None:
    verdict = classify(AMAP, {"status": "20000", "info": "INVALID_PARAMS"})
    assert_error(verdict, -2005)
    assert "INVALID_PARAMS" in verdict.message


def test_success_values_compare_by_type() -> None:
    spec = JsonEnvelope(type="json", success_field="ok", success_values=[True])
    assert classify(spec, {"ok": True}).code == 0
    assert classify(spec, {"ok": 1}).code == -1000  # 1 is not true to a provider
    default = JsonEnvelope(type="json", success_field="code")
    assert classify(default, {"code": 0}).code == 0
    assert classify(default, {"code": False}).code == -1000
    assert classify(default, {"code": 40001}).code == -1000


def test_dotted_fields_and_data_field() -> None:
    spec = JsonEnvelope(type="json", success_field="result.code", success_values=["OK"],
                        message_field="result.message", data_field="payload")
    verdict = classify(spec, {"result": {"code": "OK"}, "payload": {"id": 1}})
    assert verdict.code == 0 and verdict.data == {"id": 1}
    assert classify(spec, {"result": {"code": "OK"}}).data is None


def test_configured_json_missing_field_or_not_an_object_is_unreadable() -> None:
    assert_error(classify(AMAP, {"info": "OK"}), -1004)
    assert_error(classify(AMAP, [{"status": "1"}]), -1004)
    assert_error(make_adapter(AMAP).classify(answer(b""), RULE), -1004)


# -- xml (WeChat Pay v2) --

XML_OK = """<xml>
   <return_code><![CDATA[SUCCESS]]></return_code>
   <return_msg><![CDATA[OK]]></return_msg>
   <appid><![CDATA[wx2421b1c4370ec43b]]></appid>
   <mch_id><![CDATA[10000100]]></mch_id>
   <nonce_str><![CDATA[IITRi8Iabbblz1Jc]]></nonce_str>
   <sign><![CDATA[7921E432F65EB8ED0CE9755F0E86D72F]]></sign>
   <result_code><![CDATA[SUCCESS]]></result_code>
   <prepay_id><![CDATA[wx201411101639507cbf6ffd8b0779950874]]></prepay_id>
   <trade_type><![CDATA[JSAPI]]></trade_type>
</xml>"""


def test_xml_success_data() -> None:
    verdict = make_adapter("xml").classify(xml_answer(XML_OK), RULE)
    assert verdict.code == 0
    assert verdict.data == {
        "appid": "wx2421b1c4370ec43b", "mch_id": "10000100", "nonce_str": "IITRi8Iabbblz1Jc",
        "prepay_id": "wx201411101639507cbf6ffd8b0779950874", "trade_type": "JSAPI",
    }


def test_xml_without_result_code_is_success() -> None:
    text = "<xml><return_code>SUCCESS</return_code><sandbox_signkey>abc</sandbox_signkey></xml>"
    assert make_adapter("xml").classify(xml_answer(text), RULE).code == 0


def wxpay_fail(return_msg: str) -> str:
    return ("<xml><return_code><![CDATA[FAIL]]></return_code>"
            f"<return_msg><![CDATA[{return_msg}]]></return_msg></xml>")


def wxpay_result(err_code: str, des: str) -> str:
    return ("<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg>"
            "<result_code><![CDATA[FAIL]]></result_code>"
            f"<err_code><![CDATA[{err_code}]]></err_code><err_code_des><![CDATA[{des}]]></err_code_des></xml>")


@pytest.mark.parametrize(("text", "code", "provider_code"), [
    (wxpay_fail("签名错误,请检查后再试"), -1002, "FAIL"),
    (wxpay_fail("NOAUTH"), -1002, "NOAUTH"),
    (wxpay_fail("SYSTEMERROR"), -1003, "SYSTEMERROR"),
    (wxpay_fail("mch_id参数格式错误"), -2005, "FAIL"),
    (wxpay_result("SIGNERROR", "签名错误"), -1002, "SIGNERROR"),
    (wxpay_result("APPID_NOT_EXIST", "APPID不存在"), -1002, "APPID_NOT_EXIST"),
    (wxpay_result("SYSTEMERROR", "系统错误"), -1003, "SYSTEMERROR"),
    (wxpay_result("ORDERPAID", "该订单已支付"), -2005, "ORDERPAID"),
    (wxpay_result("ORDERNOTEXIST", "此交易订单号不存在"), -2005, "ORDERNOTEXIST"),
])
def test_xml_failures(text: str, code: int, provider_code: str) -> None:
    verdict = make_adapter("xml").classify(xml_answer(text), RULE)
    assert_error(verdict, code)
    assert verdict.provider_code == provider_code
    for words in ("签名错误", "该订单已支付", "此交易订单号不存在", "mch_id参数格式错误"):
        assert words not in verdict.message
    assert "return_msg=" in verdict.detail


@pytest.mark.parametrize("text", [
    "<xml><return_code>SUCCESS</return_code>",  # truncated
    "<xml><appid>wx1</appid></xml>",  # no return_code
    "{\"return_code\": \"SUCCESS\"}",
    "",
    # billion laughs: refused, not expanded
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    "<xml><return_code>&lol2;</return_code></xml>",
    # external entity
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><return_code>&e;</return_code></xml>',
])
def test_xml_unreadable(text: str) -> None:
    verdict = make_adapter("xml").classify(xml_answer(text), RULE)
    assert_error(verdict, -1004)
    assert "root:" not in verdict.detail


# -- raw --

def test_raw_keeps_the_body_and_judges_the_status() -> None:
    adapter = make_adapter("raw")
    ok = adapter.classify(answer(b"\x89PNG\r\n", 200, "image/png"), RULE)
    assert ok.code == 0 and ok.data == b"\x89PNG\r\n"
    assert adapter.classify(answer(b"{}", 429), RULE).code == -1005


# -- unreadable answers --

@pytest.mark.parametrize("envelope", ["wechat", "alipay", "json", AMAP])
@pytest.mark.parametrize(("body", "content_type"), [
    (b"", "application/json"),
    (b"   ", "application/json"),
    (b"<html>502 Bad Gateway</html>", "text/html"),
    (b'{"errcode": 0', "application/json"),
    (b'{"errcode": NaN}', "application/json"),
    (b'{"a": "\xff\xfe"}', "application/json"),  # not UTF-8
    (b'{"a": 1}', "application/json; charset=x-no-such-charset"),
    (b'{"a": 1}', "application/json; charset=rot13"),
    (b"[" * 100_000, "application/json"),  # nesting past the parser's recursion limit
])
def test_unreadable_answers_are_1004(envelope: Any, body: bytes, content_type: str) -> None:
    if envelope == "json" and not body.strip():
        pytest.skip("plain json reads an empty body as data null (a 204 has none)")
    verdict = make_adapter(envelope).classify(answer(body, 200, content_type), RULE)
    assert_error(verdict, -1004)
    assert http_status(verdict.code) == 502
    assert len(verdict.detail) <= 500


def test_declared_charset_is_honoured() -> None:
    body = '{"errcode": 0, "nickname": "微信用户"}'.encode("gbk")
    verdict = make_adapter("wechat").classify(answer(body, 200, "application/json; charset=GBK"), RULE)
    assert verdict.data == {"nickname": "微信用户"}
    bom = make_adapter("json").classify(answer(b'\xef\xbb\xbf{"a": 1}'), RULE)
    assert bom.data == {"a": 1}


@pytest.mark.parametrize("envelope", ENVELOPES, ids=str)
def test_fuzz_never_raises(envelope: Any) -> None:
    adapter = make_adapter(envelope)
    rng = random.Random(1234)
    seeds = [b'{"errcode":40001}', b'{"x_response":{"code":"40004"}}', XML_OK.encode(), b'{"status":"1"}']
    for _ in range(1500):
        kind = rng.random()
        if kind < 0.4:
            body = rng.randbytes(rng.randrange(0, 64))
        else:  # damaged real answers reach deeper into the adapters
            body = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body[: rng.randrange(len(body) + 1)])
        status = rng.choice([200, 200, 200, 204, 301, 400, 401, 429, 500, 503, 599, 0, 99])
        content_type = rng.choice(["application/json", "text/xml", ""])
        verdict = adapter.classify(answer(body, status, content_type), RULE)
        assert isinstance(verdict.code, int) and type(verdict.code) is int
        render(verdict.code, verdict.message, verdict.data, "req-0001")


# -- render --

def test_render_success() -> None:
    body = render(0, "success", {"nickname": "微信用户"}, "abcd1234")
    expected = '{"code":0,"message":"success","data":{"nickname":"微信用户"},"request_id":"abcd1234"}'
    assert body == expected.encode()


@pytest.mark.parametrize(("code", "source"), [(-1001, "upstream"), (-2004, "caller"), (-3001, "gateway")])
def test_render_error_has_source(code: int, source: str) -> None:
    message = "wechat.send_msg: upstream timed out after 3 attempts"
    parsed = json.loads(render(code, message, None, "abcd1234"))
    assert parsed == {"code": code, "message": message, "data": None, "request_id": "abcd1234",
                      "source": source}


def test_render_lone_surrogate_stays_valid_json() -> None:
    data = json.loads('"\\ud800"')
    body = render(0, "success", data, "abcd1234")
    assert json.loads(body)["data"] == data


def test_render_of_a_verdict() -> None:
    verdict = classify("wechat", {"errcode": 45009, "errmsg": "reach max api daily quota limit"},
                       rule="wechat.send_msg")
    parsed = json.loads(render(verdict.code, verdict.message, verdict.data, "abcd1234"))
    assert parsed["code"] == -1005 and parsed["source"] == "upstream"
    assert parsed["message"] == "wechat.send_msg: provider rate-limited the gateway (errcode 45009)"
