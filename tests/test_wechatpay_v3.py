"""WeChat Pay API v3 (SPEC 17), in process: the request signature byte for byte against the
`wechatpayv3` package's own signing code, answer verification (public key and platform
certificates), the `wechatpay_v3` envelope's codes, and the rule checks on keys."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from addons.envelope import ProviderAnswer, make_adapter
from addons.errors import GatewayError
from addons.outbound import OutboundRequest
from addons.rules.loader import load_sources
from addons.runtime import ServiceRuntime
from addons.signing.wechatpay_v3 import WechatPayV3Credentials, WechatPayV3Signer
from addons.signing.wechatpay_v3.signer import multipart_meta

MCHID, SERIAL, PUBKEY_ID = "1900000109", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "PUB_KEY_ID_0119000001092024"
NOW = 1_764_000_000.0


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _certificate(key: rsa.RSAPrivateKey, serial: int, start: datetime | None = None) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    start = start or datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start).not_valid_after(start + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def keys() -> SimpleNamespace:
    merchant, platform, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
    return SimpleNamespace(merchant=merchant, platform=platform, other=other,
                           merchant_pem=_private_pem(merchant), platform_private_pem=_private_pem(platform),
                           platform_public_pem=_public_pem(platform))


def _credentials(keys: SimpleNamespace, **extra: Any) -> WechatPayV3Credentials:
    fields: dict[str, Any] = {"type": "wechatpay_v3", "mch_id": MCHID, "serial_no": SERIAL,
                              "private_key": keys.merchant_pem, "platform_public_key": keys.platform_public_pem,
                              "platform_public_key_id": PUBKEY_ID, **extra}
    return WechatPayV3Credentials.model_validate({k: v for k, v in fields.items() if v is not None})


def _request(method: str, path: str, query: list[tuple[str, str]] | None = None, body: bytes = b"",
             content_type: str = "application/json") -> OutboundRequest:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type,
                                             "Authorization": 'WECHATPAY2-SHA256-RSA2048 mchid="1",signature="app"'})
    return OutboundRequest(method, "https", "api.mch.weixin.qq.com", 443, path, query or [], headers, body)


def _sdk_authorization(monkeypatch: pytest.MonkeyPatch, keys: SimpleNamespace, method: str, path: str,
                       body: str, nonce: str, now: float) -> str:
    """The header wechatpayv3 itself builds for the same call, nonce and second."""
    import wechatpayv3.utils as sdk

    monkeypatch.setattr(sdk, "time", SimpleNamespace(time=lambda: now))
    return sdk.build_authorization(path, method, MCHID, SERIAL, sdk.load_private_key(keys.merchant_pem),
                                   data=body or None, nonce_str=nonce)


def _nonce(authorization: str) -> str:
    found = re.search(r'nonce_str="([0-9A-Z]+)"', authorization)
    assert found, authorization
    return found.group(1)


# ------------------------------------------------------------------------------------ request side


@pytest.mark.parametrize(("method", "path", "query", "body"), [
    ("POST", "/v3/pay/transactions/jsapi", [],
     json.dumps({"appid": "wx8888888888888888", "mchid": MCHID, "description": "图书", "out_trade_no": "T1",
                 "amount": {"total": 100, "currency": "CNY"}})),
    ("GET", "/v3/pay/transactions/out-trade-no/T1", [("mchid", MCHID)], ""),
    ("GET", "/v3/bill/tradebill", [("bill_date", "2024-01-01"), ("bill_type", "ALL")], ""),
])
def test_authorization_is_byte_identical_to_the_sdks(monkeypatch: pytest.MonkeyPatch, keys: SimpleNamespace,
                                                     method: str, path: str, query: list[tuple[str, str]],
                                                     body: str) -> None:
    signer = WechatPayV3Signer(_credentials(keys))
    req = _request(method, path, query, body.encode())
    signer.sign(req, NOW)
    (ours,) = req.headers.getall("Authorization")  # the app's own header replaced, never merged
    sdk_path = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    assert ours == _sdk_authorization(monkeypatch, keys, method, sdk_path, body, _nonce(ours), NOW)
    assert f'timestamp="{int(NOW)}"' in ours and f'mchid="{MCHID}"' in ours and f'serial_no="{SERIAL}"' in ours


def test_every_attempt_gets_a_fresh_nonce_and_timestamp(keys: SimpleNamespace) -> None:
    signer = WechatPayV3Signer(_credentials(keys))
    first, second = _request("POST", "/v3/refund/domestic/refunds", body=b"{}"), None
    signer.sign(first, NOW)
    second = _request("POST", "/v3/refund/domestic/refunds", body=b"{}")
    signer.sign(second, NOW + 2)
    a, b = first.headers["Authorization"], second.headers["Authorization"]
    assert _nonce(a) != _nonce(b) and len(_nonce(a)) == 32
    assert f'timestamp="{int(NOW)}"' in a and f'timestamp="{int(NOW) + 2}"' in b


def test_a_media_upload_signs_its_meta_part(monkeypatch: pytest.MonkeyPatch, keys: SimpleNamespace) -> None:
    meta = json.dumps({"filename": "a.png", "sha256": "ab" * 32})
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n"
            + meta.encode() + b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n--XyZ--\r\n")
    assert multipart_meta("multipart/form-data; boundary=XyZ", body) == meta.encode()
    signer = WechatPayV3Signer(_credentials(keys))
    req = _request("POST", "/v3/merchant/media/upload", body=body, content_type="multipart/form-data; boundary=XyZ")
    signer.sign(req, NOW)
    ours = req.headers["Authorization"]
    assert ours == _sdk_authorization(monkeypatch, keys, "POST", "/v3/merchant/media/upload", meta, _nonce(ours), NOW)


# ------------------------------------------------------------------------------------- answer side


def _signed_headers(key: rsa.RSAPrivateKey, body: bytes, timestamp: float, serial: str = PUBKEY_ID,
                    nonce: str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS") -> CIMultiDict[str]:
    """What WeChat Pay sends, signed with wechatpayv3's own RSA code."""
    from wechatpayv3.utils import rsa_sign

    ts = str(int(timestamp))
    signature = rsa_sign(key, f"{ts}\n{nonce}\n{body.decode()}\n")
    return CIMultiDict({"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
                        "Wechatpay-Serial": serial, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"})


ANSWER = json.dumps({"prepay_id": "wx201410272009395522657a690389285100"}).encode()


def _refusal(signer: WechatPayV3Signer, headers: CIMultiDict[str], body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as refused:
        signer.verify_response(200, headers, body)
    assert refused.value.code == -1004
    return refused.value


def test_a_signed_answer_passes_and_any_change_is_1004(keys: SimpleNamespace) -> None:
    from wechatpayv3.utils import rsa_verify

    signer = WechatPayV3Signer(_credentials(keys), clock=lambda: NOW)
    headers = _signed_headers(keys.platform, ANSWER, NOW - 10)
    signer.verify_response(200, headers, ANSWER)
    signer.verify_response(204, _signed_headers(keys.platform, b"", NOW), b"")  # 204: signed over ""
    tampered = ANSWER.replace(b"wx2014", b"wx2015")
    # The SDK's own verifier agrees on both.
    assert rsa_verify(headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], ANSWER.decode(),
                      headers["Wechatpay-Signature"], keys.platform.public_key())
    assert not rsa_verify(headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], tampered.decode(),
                          headers["Wechatpay-Signature"], keys.platform.public_key())
    error = _refusal(signer, headers, tampered)
    assert "does not match" in error.detail and "wx2015" in error.detail  # the raw answer, for the log
    assert "wx2015" not in error.message and "prepay" not in error.message  # never for the caller
    _refusal(signer, _signed_headers(keys.other, ANSWER, NOW), ANSWER)  # signed by someone else


def test_missing_headers_unknown_serial_and_stale_timestamps_are_1004(keys: SimpleNamespace) -> None:
    signer = WechatPayV3Signer(_credentials(keys), clock=lambda: NOW)
    assert "no Wechatpay-Signature" in _refusal(signer, CIMultiDict(), ANSWER).detail
    for name in ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial"):
        headers = _signed_headers(keys.platform, ANSWER, NOW)
        del headers[name]
        _refusal(signer, headers, ANSWER)
    assert "names no configured" in _refusal(
        signer, _signed_headers(keys.platform, ANSWER, NOW, serial="PUB_KEY_ID_OTHER"), ANSWER).detail
    for skew in (-301, 301, -3600):
        stale = _refusal(signer, _signed_headers(keys.platform, ANSWER, NOW + skew), ANSWER)
        assert "300s off" in stale.detail
    signer.verify_response(200, _signed_headers(keys.platform, ANSWER, NOW - 299), ANSWER)
    other_type = _signed_headers(keys.platform, ANSWER, NOW)
    other_type["Wechatpay-Signature-Type"] = "WECHATPAY2-SM2-WITH-SM3"
    _refusal(signer, other_type, ANSWER)
    probe = _signed_headers(keys.platform, ANSWER, NOW)
    probe["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + probe["Wechatpay-Signature"]
    _refusal(signer, probe, ANSWER)


def test_platform_certificates_are_picked_by_serial(keys: SimpleNamespace) -> None:
    expired = datetime.fromtimestamp(NOW, UTC) - timedelta(days=31)
    certs = [_certificate(keys.other, 0x1A2B), _certificate(keys.platform, 0x5157F09EFDC096DE),
             _certificate(keys.platform, 0x0BAD, start=expired)]
    signer = WechatPayV3Signer(_credentials(keys, platform_public_key=None, platform_public_key_id=None,
                                            platform_certificates=certs), clock=lambda: NOW)
    signer.verify_response(200, _signed_headers(keys.platform, ANSWER, NOW, serial="5157F09EFDC096DE"), ANSWER)
    signer.verify_response(200, _signed_headers(keys.platform, ANSWER, NOW, serial="5157f09efdc096de"), ANSWER)
    signer.verify_response(200, _signed_headers(keys.other, ANSWER, NOW, serial="1A2B"), ANSWER)
    # The right serial with the wrong key's signature, and a serial no certificate has.
    _refusal(signer, _signed_headers(keys.other, ANSWER, NOW, serial="5157F09EFDC096DE"), ANSWER)
    _refusal(signer, _signed_headers(keys.platform, ANSWER, NOW, serial="FFFF"), ANSWER)
    # The same key, but under a certificate that expired: refused, as WeChat Pay's SDKs do.
    assert "expired" in _refusal(signer, _signed_headers(keys.platform, ANSWER, NOW, serial="0BAD"), ANSWER).detail


# ------------------------------------------------------------------------------------------ envelope


def _classify(status: int, body: bytes | dict[str, Any]) -> Any:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return make_adapter("wechatpay_v3").classify(
        ProviderAnswer(status, CIMultiDict({"Content-Type": "application/json"}), raw), "wechatpay.pay")


@pytest.mark.parametrize(("status", "code", "gateway_code"), [
    (401, "SIGN_ERROR", -1002),
    (400, "PARAM_ERROR", -2005),
    (400, "INVALID_REQUEST", -2005),
    (429, "FREQUENCY_LIMITED", -1005),
    (500, "SYSTEM_ERROR", -1003),
    (404, "ORDER_NOT_EXIST", -2005),  # not named by SPEC 17: the HTTP status decides (SPEC 5)
    (403, "NO_AUTH", -1002),
    (502, "BAD_GATEWAY", -1000),
])
def test_each_error_code(status: int, code: str, gateway_code: int) -> None:
    words = "签名错误 请检查后再试 secret-ish provider words"
    verdict = _classify(status, {"code": code, "message": words, "detail": {"field": "/amount/total"}})
    assert verdict.code == gateway_code and verdict.provider_code == code
    assert verdict.message.startswith("wechatpay.pay: ") and code in verdict.message
    assert words not in verdict.message  # the gateway's own sentence (SPEC 5)
    assert words in verdict.detail and "/amount/total" in verdict.detail  # the log has it all


def test_success_answers() -> None:
    assert _classify(200, {"prepay_id": "wx1"}).data == {"prepay_id": "wx1"}
    no_content = _classify(204, b"")
    assert no_content.code == 0 and no_content.data is None
    assert _classify(202, {"code": "USERPAYING"}).code == 0  # 2xx is success, whatever the body
    assert _classify(200, b"<html>not json</html>").code == -1004
    assert _classify(302, b"").code == -1000
    assert _classify(500, b"upstream connect error").code == -1000


# ---------------------------------------------------------------------------------------- rule files


def _load(tmp_path: Path, credentials: str, env: dict[str, str], extra: str = "") -> tuple[Any, list[str]]:
    text = ('service: wechatpay\nupstream: {url: "https://api.mch.weixin.qq.com"}\ncredentials:\n'
            + textwrap.indent(textwrap.dedent(credentials), "  ") + f"envelope: wechatpay_v3\n{extra}\n")
    rules, problems = load_sources([("wechatpay.yaml", text)], tmp_path, env)
    return rules, [str(p) for p in problems]


GOOD = """\
    type: wechatpay_v3
    mch_id: 1900000109
    serial_no: ${SERIAL}
    private_key: ${KEY}
    platform_public_key: file:pub_key.pem
    platform_public_key_id: ${PUBKEY_ID}
"""


def test_keys_from_files_and_env_load_and_bad_keys_are_rule_errors_with_a_line(
        tmp_path: Path, keys: SimpleNamespace) -> None:
    (tmp_path / "pub_key.pem").write_text(keys.platform_public_pem)
    (tmp_path / "apiclient_key.pem").write_text(keys.merchant_pem)
    env = {"SERIAL": SERIAL, "KEY": "file:apiclient_key.pem", "PUBKEY_ID": PUBKEY_ID}
    rules, problems = _load(tmp_path, GOOD, env)
    assert problems == []
    runtime = ServiceRuntime(rules.services["wechatpay"], None)
    assert isinstance(runtime.signer, WechatPayV3Signer)
    assert keys.merchant_pem in runtime.secrets()  # registered with the redactor
    # A PEM in a variable with literal "\n" (as env files often carry it) works too.
    rules, problems = _load(tmp_path, GOOD, {**env, "KEY": keys.merchant_pem.replace("\n", "\\n")})
    assert problems == [] and "wechatpay" in rules.services

    secret_line = keys.merchant_pem.splitlines()[5]
    broken = keys.merchant_pem.replace(secret_line, secret_line[::-1])
    _, problems = _load(tmp_path, GOOD, {**env, "KEY": broken})
    assert len(problems) == 1 and problems[0].startswith("wechatpay.yaml:7: credentials.private_key: ")
    assert secret_line[::-1] not in problems[0] and "BEGIN" not in problems[0]

    (tmp_path / "pub_key.pem").write_text("not a key")
    _, problems = _load(tmp_path, GOOD, env)
    assert problems == ["wechatpay.yaml:8: credentials.platform_public_key: platform_public_key is not a usable "
                        "RSA public key; expected WeChat Pay's public key PEM (pub_key.pem, "
                        "`-----BEGIN PUBLIC KEY-----`)"]


def test_rule_errors_on_missing_answer_keys_and_a_second_signature(tmp_path: Path, keys: SimpleNamespace) -> None:
    (tmp_path / "pub_key.pem").write_text(keys.platform_public_pem)
    env = {"SERIAL": SERIAL, "KEY": keys.merchant_pem, "PUBKEY_ID": PUBKEY_ID}
    _, problems = _load(tmp_path, GOOD.replace("    platform_public_key_id: ${PUBKEY_ID}\n", ""), env)
    assert len(problems) == 1 and "go together" in problems[0]
    no_keys = "".join(line + "\n" for line in GOOD.splitlines() if "platform" not in line)
    _, problems = _load(tmp_path, no_keys, env)
    assert len(problems) == 1 and "no answer can be verified" in problems[0]
    _, problems = _load(tmp_path, GOOD.replace("1900000109", "19000-00109"), env)
    assert problems == ["wechatpay.yaml:5: credentials.mch_id: mch_id must be the merchant number (digits only)"]
    _, problems = _load(tmp_path, GOOD, env, extra="signing: {type: hmac_sha256, secret: x}")
    assert len(problems) == 1 and "remove 'signing:'" in problems[0]
    _, problems = _load(tmp_path, GOOD, env, extra="")
    assert problems == []
    # With its variables unset the service is disabled, not an error (as the shipped rule file).
    rules, problems = _load(tmp_path, GOOD, {})
    assert problems == [] and "wechatpay" in rules.disabled
