"""Request signers checked against the vendors' own code (botocore, tencentcloud-sdk-python,
python-alipay-sdk) and against hand computation, with time frozen by passing `now`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from multidict import CIMultiDict
from pydantic import BaseModel, TypeAdapter, ValidationError

from addons.errors import GatewayError
from addons.outbound import OutboundRequest
from addons.signing import (
    AlipayRsa2Signer,
    AwsSigV4Signer,
    HmacSha256Signer,
    Signer,
    SigningSpec,
    TencentTc3Signer,
    make_signer,
)
from addons.signing.alipay_rsa2 import split_answer
from addons.signing.schema import AlipayRsa2Signing, HmacSha256Signing

NOW = 1_700_000_000.75  # 2023-11-14T22:13:20Z, 2023-11-15 06:13:20 in Shanghai
SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(SigningSpec)


def make_req(method: str, url: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"") -> OutboundRequest:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return OutboundRequest(
        method=method, scheme=parts.scheme, host=parts.hostname or "", port=port, path=parts.path or "/",
        query=parse_qsl(parts.query, keep_blank_values=True),
        headers=CIMultiDict(headers or {}), body=body,
    )


def spec(**fields: Any) -> Any:
    return SPEC_ADAPTER.validate_python(fields)


# ---------------------------------------------------------------------------------------- dispatch


def test_make_signer_dispatches_on_type(rsa_keys: RsaKeys) -> None:
    cases = [
        ({"type": "hmac_sha256", "secret": "s"}, HmacSha256Signer),
        ({"type": "alipay_rsa2", "app_id": "1", "private_key": rsa_keys.app_pkcs8}, AlipayRsa2Signer),
        ({"type": "aws_sigv4", "access_key_id": "A", "secret_access_key": "S", "region": "us-east-1",
          "service": "s3"}, AwsSigV4Signer),
        ({"type": "tencent_tc3", "secret_id": "I", "secret_key": "K", "service": "cvm"}, TencentTc3Signer),
    ]
    for fields, cls in cases:
        signer = make_signer(spec(**fields))
        assert isinstance(signer, cls)
        assert isinstance(signer, Signer)
        if cls is not AlipayRsa2Signer:
            signer.verify_response(200, {}, b"{}")  # nothing to verify: a no-op


# ---------------------------------------------------------------------------------------- hmac


def test_hmac_default_template_matches_hand_computation() -> None:
    signer = make_signer(spec(type="hmac_sha256", secret="top-secret"))
    body = b'{"touser":"o1","msgtype":"text"}'
    req = make_req(
        "POST", "https://api.example.com/v1/send?b=2&a=x%20y", body=body,
        headers=[("X-Signature", "caller"), ("x-nonce", "one"), ("X-Nonce", "two"), ("X-Timestamp", "1")],
    )
    signer.sign(req, NOW)

    nonce = req.headers["X-Nonce"]
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    assert req.headers.getall("X-Timestamp") == ["1700000000"]
    assert len(req.headers.getall("X-Nonce")) == 1 and len(req.headers.getall("X-Signature")) == 1
    # The SPEC 7 construction, computed independently of the signer.
    message = "\n".join(
        ["POST", "/v1/send?b=2&a=x%20y", "1700000000", nonce, hashlib.sha256(body).hexdigest()]
    )
    expected = hmac.new(b"top-secret", message.encode(), hashlib.sha256).hexdigest()
    assert req.headers["X-Signature"] == expected
    assert expected == expected.lower()


def test_hmac_custom_template_headers_and_fresh_nonce() -> None:
    signer = make_signer(spec(
        type="hmac_sha256", secret="k", header="X-Sig", timestamp_header="X-Ts", nonce_header="X-N",
        string_to_sign="{host}|{method}|{path}|{timestamp}|{nonce}",
    ))
    req = make_req("GET", "http://api.example.com:8080/q?z=1")
    signer.sign(req, NOW)
    first_nonce = req.headers["X-N"]
    message = f"api.example.com:8080|GET|/q?z=1|1700000000|{first_nonce}"
    assert req.headers["X-Sig"] == hmac.new(b"k", message.encode(), hashlib.sha256).hexdigest()
    assert "X-Signature" not in req.headers

    signer.sign(req, NOW + 1)  # a retry: fresh timestamp and nonce, still one value each
    assert req.headers.getall("X-Ts") == ["1700000001"]
    assert req.headers.getall("X-N") != [first_nonce] and len(req.headers.getall("X-N")) == 1


@pytest.mark.parametrize(("fields", "needle"), [
    ({"string_to_sign": "{method}\n{body_sha265}"}, "{body_sha265}"),
    ({"string_to_sign": "{method}\n{"}, "not a valid template"),
    ({"string_to_sign": "{}"}, "unknown placeholder"),
    ({"nonce_header": "x-signature"}, "three different header names"),
])
def test_hmac_bad_spec_is_a_load_error(fields: dict[str, str], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        HmacSha256Signing.model_validate({"type": "hmac_sha256", "secret": "s", **fields})
    assert needle in str(info.value)


# ---------------------------------------------------------------------------------------- aws


AK, SK, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLETOKEN=="


@pytest.fixture
def frozen_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.auth

    frozen = datetime.fromtimestamp(NOW, UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: frozen)


def botocore_sign(method: str, url: str, headers: dict[str, str], body: bytes, service: str,
                  region: str, token: str | None, context: dict[str, Any] | None = None) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    # The URL exactly as the gateway sends it (its query re-encoded per RFC 3986).
    request = AWSRequest(method=method, url=make_req(method, url).url, headers=dict(headers), data=body)
    request.context.update(context or {})
    auth_cls = S3SigV4Auth if service == "s3" else SigV4Auth
    auth_cls(Credentials(AK, SK, token), service, region).add_auth(request)
    return dict(request.headers.items())


def ours_sign(method: str, url: str, headers: dict[str, str], body: bytes, service: str, region: str,
              token: str | None) -> dict[str, str]:
    fields: dict[str, Any] = {"type": "aws_sigv4", "access_key_id": AK, "secret_access_key": SK,
                              "region": region, "service": service}
    if token:
        fields["session_token"] = token
    req = make_req(method, url, headers, body)
    make_signer(spec(**fields)).sign(req, NOW)
    assert len(req.headers.getall("Authorization")) == 1
    return dict(req.headers.items())


AWS_CASES = [
    pytest.param("GET", "https://ec2.us-east-1.amazonaws.com/?Action=DescribeRegions&Version=2016-11-15"
                 "&Filter.1.Name=region-name&Filter.1.Value.1=us%20east&Z=%2F%7E", {}, b"", "ec2",
                 "us-east-1", id="get-query"),
    pytest.param("POST", "https://dynamodb.eu-west-1.amazonaws.com/",
                 {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.GetItem"},
                 b'{"TableName":"t","Key":{"id":{"S":"1"}}}', "dynamodb", "eu-west-1", id="post-json"),
    pytest.param("PUT", "https://my-bucket.s3.us-west-2.amazonaws.com/dir/my%20key%2Bx.txt",
                 {"Content-Type": "text/plain", "x-amz-meta-owner": "  a   b  "}, b"hello world", "s3",
                 "us-west-2", id="s3-put"),
    pytest.param("GET", "http://minio.internal:9000/bucket?list-type=2&prefix=a%20b&acl=", {}, b"", "s3",
                 "us-east-1", id="s3-get-http-port"),
    pytest.param("GET", "https://abc.execute-api.us-east-1.amazonaws.com/prod/./a//b/../c%20d", {}, b"",
                 "execute-api", "us-east-1", id="path-normalised"),
    pytest.param("POST", "https://sts.amazonaws.com/", {"Content-Type": "application/x-www-form-urlencoded"},
                 b"Action=GetCallerIdentity&Version=2011-06-15", "sts", "us-east-1", id="post-form"),
]


@pytest.mark.usefixtures("frozen_botocore")
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "session-token"])
@pytest.mark.parametrize(("method", "url", "headers", "body", "service", "region"), AWS_CASES)
def test_aws_matches_botocore(method: str, url: str, headers: dict[str, str], body: bytes, service: str,
                              region: str, token: str | None) -> None:
    expected = botocore_sign(method, url, headers, body, service, region, token)
    ours = ours_sign(method, url, headers, body, service, region, token)
    assert ours.pop("Host") == make_req(method, url).authority  # botocore leaves Host to the HTTP client
    assert ours == expected
    assert ("X-Amz-Security-Token" in ours) == (token is not None)
    assert ("X-Amz-Content-SHA256" in ours) == (service == "s3")


@pytest.mark.usefixtures("frozen_botocore")
def test_aws_replaces_what_the_caller_sent() -> None:
    url = "https://my-bucket.s3.us-east-1.amazonaws.com/k"
    stale = {"Authorization": "AWS4-HMAC-SHA256 Credential=CALLER/...", "X-Amz-Date": "20200101T000000Z",
             "X-Amz-Security-Token": "caller-token", "X-Amz-Content-SHA256": "0" * 64, "Host": "elsewhere",
             "x-amz-acl": "private"}
    ours = ours_sign("PUT", url, stale, b"data", "s3", "us-east-1", None)
    expected = botocore_sign("PUT", url, {"x-amz-acl": "private"}, b"data", "s3", "us-east-1", None)
    assert ours.pop("Host") == "my-bucket.s3.us-east-1.amazonaws.com"
    assert ours == expected  # no caller token left: these credentials have none


@pytest.mark.usefixtures("frozen_botocore")
def test_aws_drops_a_callers_presigned_query() -> None:
    presigned = ("https://b.s3.amazonaws.com/k?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 "&X-Amz-Credential=CALLER%2F20200101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20200101T000000Z"
                 "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc")
    req = make_req("GET", presigned)
    make_signer(spec(type="aws_sigv4", access_key_id=AK, secret_access_key=SK, region="us-east-1",
                     service="s3")).sign(req, NOW)
    assert req.query == [("versionId", "3")]
    ours = dict(req.headers.items())
    ours.pop("Host")
    expected = botocore_sign("GET", "https://b.s3.amazonaws.com/k?versionId=3", {}, b"", "s3", "us-east-1",
                             None)
    assert ours == expected


@pytest.mark.usefixtures("frozen_botocore")
def test_aws_date_header_is_refreshed_like_botocore() -> None:
    url = "https://sqs.us-east-1.amazonaws.com/?Action=ListQueues"
    headers = {"Date": "Mon, 01 Jan 2001 00:00:00 GMT"}
    ours = ours_sign("GET", url, headers, b"", "sqs", "us-east-1", None)
    ours.pop("Host")
    assert ours == botocore_sign("GET", url, headers, b"", "sqs", "us-east-1", None)
    assert "X-Amz-Date" not in ours


def test_aws_hop_by_hop_headers_are_not_signed() -> None:
    headers = {"Connection": "keep-alive", "Proxy-Connection": "keep-alive", "User-Agent": "x",
               "Content-Type": "application/json"}
    ours = ours_sign("POST", "https://lambda.us-east-1.amazonaws.com/x", headers, b"{}", "lambda",
                     "us-east-1", None)
    assert "SignedHeaders=content-type;host;x-amz-date," in ours["Authorization"]


@pytest.mark.parametrize("service", ["s3", "sts"])
def test_aws_boto3_request_resigned_equals_boto3_with_the_gateway_key(
        service: str, frozen_botocore: None) -> None:
    """What boto3 itself sends (S3 put_object is aws-chunked with a trailer over https), signed by the
    caller's key, re-signed by the gateway, equals what boto3 sends when it holds the gateway's key."""
    import boto3
    from botocore.awsrequest import AWSResponse

    def capture(access_key: str, secret_key: str) -> dict[str, Any]:
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                        aws_session_token=TOKEN, region_name="us-east-1")
        client = session.client(service, endpoint_url=f"https://{service}.us-east-1.amazonaws.com")
        seen: dict[str, Any] = {}

        def before_send(request: Any, **_: Any) -> AWSResponse:
            body = request.body
            body = body.read() if hasattr(body, "read") else (body or b"")
            headers = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()]
            seen.update(method=request.method, url=request.url, headers=headers,
                        body=body if isinstance(body, bytes) else body.encode())
            raw = SimpleNamespace(stream=lambda *a, **k: iter([b""]))
            return AWSResponse(request.url, 200, {}, raw)

        client.meta.events.register("before-send", before_send)
        try:
            if service == "s3":
                client.put_object(Bucket="bucket", Key="dir/a key.txt", Body=b"hello",
                                  ContentType="text/plain")
            else:
                client.get_caller_identity()
        except Exception:  # the canned empty answer may not parse; the request is already captured
            pass
        return seen

    by_caller = capture("AKIDCALLER", "caller-secret")
    by_gateway = capture(AK, SK)
    # boto3 adds these headers after signing; the gateway sees them before and signs them too
    # (still valid), so they are left out to compare the signatures themselves.
    late = {"amz-sdk-invocation-id", "amz-sdk-request", "content-length"}
    headers = [(k, v) for k, v in by_caller["headers"] if k.lower() not in late]
    req = make_req(by_caller["method"], by_caller["url"], headers, by_caller["body"])
    make_signer(spec(type="aws_sigv4", access_key_id=AK, secret_access_key=SK, session_token=TOKEN,
                     region="us-east-1", service=service)).sign(req, NOW)
    expected = {k: v for k, v in by_gateway["headers"] if k.lower() not in late}
    ours = dict(req.headers.items())
    ours.pop("Host")
    assert ours == expected
    if service == "s3":
        assert ours["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


def test_aws_chunk_signed_upload_is_refused() -> None:
    req = make_req("PUT", "https://b.s3.amazonaws.com/k",
                   {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}, b"5;chunk-signature=...")
    signer = make_signer(spec(type="aws_sigv4", access_key_id=AK, secret_access_key=SK, region="us-east-1",
                              service="s3"))
    with pytest.raises(GatewayError) as info:
        signer.sign(req, NOW)
    assert info.value.code == -2005


# ---------------------------------------------------------------------------------------- tencent


SECRET_ID, SECRET_KEY = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE", "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"


@pytest.fixture
def tencent_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import tencentcloud.common.abstract_client as abstract_client

    monkeypatch.setattr(abstract_client, "time", SimpleNamespace(time=lambda: NOW))
    yield abstract_client


def sdk_request(method: str, params: dict[str, Any], region: str, unsigned: bool = False) -> Any:
    """The request tencentcloud-sdk-python's client builds and signs (its TC3 code path)."""
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.http.request import RequestInternal
    from tencentcloud.common.profile.client_profile import ClientProfile

    profile = ClientProfile()
    profile.unsignedPayload = unsigned
    client = CommonClient("cvm", "2017-03-12", Credential(SECRET_ID, SECRET_KEY), region, profile)
    req = RequestInternal("cvm.tencentcloudapi.com", method, "/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's datetime.utcfromtimestamp
        client._build_req_inter("DescribeInstances", params, req)
    return req


@pytest.mark.usefixtures("tencent_sdk")
@pytest.mark.parametrize("region", ["ap-guangzhou", ""])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_tencent_matches_sdk(method: str, region: str) -> None:
    params = {"Limit": 10, "Offset": 0, "Filters": [{"Name": "zone", "Values": ["ap-guangzhou-1"]}]}
    sdk = sdk_request(method, params, region)
    caller_headers = {k: v for k, v in sdk.header.items() if k not in ("Authorization", "X-TC-Timestamp")}
    caller_headers["Authorization"] = "TC3-HMAC-SHA256 Credential=CALLER/..."  # replaced, never merged
    caller_headers["X-TC-Token"] = "caller-temporary-token"
    if method == "GET":
        req = make_req("GET", f"https://cvm.tencentcloudapi.com/?{sdk.data}", caller_headers)
    else:
        req = make_req("POST", "https://cvm.tencentcloudapi.com/", caller_headers, sdk.data.encode())

    fields = {"type": "tencent_tc3", "secret_id": SECRET_ID, "secret_key": SECRET_KEY, "service": "cvm"}
    make_signer(spec(**fields, region=region or None)).sign(req, NOW)

    assert req.headers.getall("Authorization") == [sdk.header["Authorization"]]
    assert req.headers["X-TC-Timestamp"] == sdk.header["X-TC-Timestamp"] == "1700000000"
    assert req.headers.get("X-TC-Region") == sdk.header.get("X-TC-Region")
    assert req.headers["X-TC-Action"] == "DescribeInstances" and req.headers["X-TC-Version"] == "2017-03-12"
    assert "X-TC-Token" not in req.headers


@pytest.mark.usefixtures("tencent_sdk")
def test_tencent_unsigned_payload_and_default_content_type_match_sdk() -> None:
    sdk = sdk_request("POST", {"Limit": 1}, "ap-shanghai", unsigned=True)
    headers = {k: v for k, v in sdk.header.items() if k not in ("Authorization", "Content-Type")}
    req = make_req("POST", "https://cvm.tencentcloudapi.com/", headers, sdk.data.encode())
    make_signer(spec(type="tencent_tc3", secret_id=SECRET_ID, secret_key=SECRET_KEY, service="cvm",
                     region="ap-shanghai")).sign(req, NOW)
    assert req.headers["Content-Type"] == "application/json"  # what the SDK sends for POST
    assert req.headers["Authorization"] == sdk.header["Authorization"]


# ---------------------------------------------------------------------------------------- alipay


class RsaKeys(SimpleNamespace):
    app_key: rsa.RSAPrivateKey
    app_pkcs1: str
    app_pkcs8: str
    app_public: str
    alipay_key: rsa.RSAPrivateKey
    alipay_private: str
    alipay_public: str


def _pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                 fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _pem_public(key: rsa.RSAPrivateKey, fmt: serialization.PublicFormat = SPKI) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, fmt).decode()


@pytest.fixture(scope="module")
def rsa_keys() -> RsaKeys:
    app = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alipay = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RsaKeys(
        app_key=app,
        app_pkcs1=_pem_private(app, serialization.PrivateFormat.TraditionalOpenSSL),
        app_pkcs8=_pem_private(app, serialization.PrivateFormat.PKCS8),
        app_public=_pem_public(app),
        alipay_key=alipay,
        alipay_private=_pem_private(alipay, serialization.PrivateFormat.PKCS8),
        alipay_public=_pem_public(alipay),
    )


def bare(pem: str) -> str:
    """The base64 body of a PEM, as Alipay's console shows keys."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def alipay_spec(keys: RsaKeys, private_key: str | None = None, public_key: str | None = None) -> Any:
    return spec(type="alipay_rsa2", app_id="2021000000000001", private_key=private_key or keys.app_pkcs1,
                alipay_public_key=public_key or keys.alipay_public)


def sdk(keys: RsaKeys, private_pem: str | None = None) -> Any:
    from alipay import AliPay

    return AliPay(appid="2021000000000001", app_notify_url=None,
                  app_private_key_string=private_pem or keys.app_pkcs1,
                  alipay_public_key_string=keys.app_public, sign_type="RSA2")


def test_alipay_query_params_signed_like_the_sdk(rsa_keys: RsaKeys) -> None:
    biz = json.dumps({"out_trade_no": "20150320010101001", "total_amount": "88.88"}, separators=(",", ":"))
    url = ("https://openapi.alipay.com/gateway.do?method=alipay.trade.query&format=JSON"
           f"&biz_content={quote(biz)}&app_id=caller-app&sign=stale&sign_type=RSA&timestamp=2000-01-01%2000:00:00"
           "&app_cert_sn=caller-cert")
    req = make_req("GET", url)
    make_signer(alipay_spec(rsa_keys)).sign(req, NOW)

    params = dict(req.query)
    assert len(req.query) == len(params)  # one value per parameter
    assert params["app_id"] == "2021000000000001" and params["sign_type"] == "RSA2"
    assert params["charset"] == "utf-8" and params["version"] == "1.0"
    shanghai = datetime.fromtimestamp(NOW, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    assert params["timestamp"] == shanghai == "2023-11-15 06:13:20"
    assert "app_cert_sn" not in params and params["biz_content"] == biz

    # python-alipay-sdk signs the same parameters to the same signature (PKCS#1 v1.5 is
    # deterministic), and its verifier accepts ours over its own string to sign.
    ali = sdk(rsa_keys)
    unsigned = {k: v for k, v in params.items() if k != "sign"}
    sdk_signed = parse_qs(ali.sign_data(dict(unsigned)))
    assert sdk_signed["sign"] == [params["sign"]]
    # AliPay.verify() drops sign_type (it is meant for notifications, where sign_type is not
    # signed); an open API request signs it, so the SDK's verifier is called on its own string.
    message = "&".join(f"{k}={v}" for k, v in ali._ordered_data(dict(unsigned)))
    assert ali._verify(message, params["sign"])


def test_alipay_form_body_stays_in_the_body(rsa_keys: RsaKeys) -> None:
    biz = '{"out_trade_no":"T 1","subject":"咖啡 & 茶"}'
    body = f"method=alipay.trade.create&biz_content={quote(biz)}&sign=old&app_id=x&notify_url=".encode()
    req = make_req("POST", "https://openapi.alipay.com/gateway.do?charset=utf-8&version=1.0",
                   {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}, body)
    make_signer(alipay_spec(rsa_keys)).sign(req, NOW)

    body_params = parse_qsl(req.body.decode(), keep_blank_values=True)
    assert body_params == [("method", "alipay.trade.create"), ("biz_content", biz), ("notify_url", "")]
    query = dict(req.query)
    assert query["charset"] == "utf-8" and query["version"] == "1.0"
    assert [k for k, _ in req.query].count("charset") == 1

    ali = sdk(rsa_keys)
    everything = {k: v for k, v in [*req.query, *body_params] if k != "sign" and v}  # Alipay skips empty ones
    assert parse_qs(ali.sign_data(dict(everything)))["sign"] == [query["sign"]]


def test_alipay_gbk_charset_and_empty_params(rsa_keys: RsaKeys) -> None:
    body = b"biz_content=" + quote('{"subject":"测试"}'.encode("gbk")).encode() + b"&empty=&method=alipay.x"
    req = make_req("POST", "https://openapi.alipay.com/gateway.do?charset=GBK",
                   {"Content-Type": "application/x-www-form-urlencoded"}, body)
    make_signer(alipay_spec(rsa_keys)).sign(req, NOW)
    assert req.body == body  # nothing replaced in the body, so its bytes are left alone
    query = dict(req.query)
    content = "&".join([
        "app_id=2021000000000001", 'biz_content={"subject":"测试"}', "charset=GBK", "method=alipay.x",
        "sign_type=RSA2", "timestamp=2023-11-15 06:13:20", "version=1.0",
    ])
    rsa_keys.app_key.public_key().verify(base64.b64decode(query["sign"]), content.encode("gbk"),
                                         padding.PKCS1v15(), hashes.SHA256())


def test_alipay_key_formats_all_sign_alike(rsa_keys: RsaKeys) -> None:
    pkcs1_escaped = rsa_keys.app_pkcs1.strip().replace("\n", "\\n")  # as it arrives through ${ENV}
    public_variants = [rsa_keys.alipay_public, bare(rsa_keys.alipay_public),
                       _pem_public(rsa_keys.alipay_key, serialization.PublicFormat.PKCS1)]
    signatures = set()
    for i, private_key in enumerate([rsa_keys.app_pkcs1, rsa_keys.app_pkcs8, bare(rsa_keys.app_pkcs8),
                                     bare(rsa_keys.app_pkcs1), pkcs1_escaped]):
        req = make_req("GET", "https://openapi.alipay.com/gateway.do?method=alipay.x")
        signer = make_signer(alipay_spec(rsa_keys, private_key, public_variants[i % len(public_variants)]))
        signer.sign(req, NOW)
        signatures.add(dict(req.query)["sign"])
    assert len(signatures) == 1


def alipay_answer(keys: RsaKeys, response_key: str, response: str, *, sign: str | None = "auto",
                  signed_text: str | None = None) -> bytes:
    """An answer as Alipay writes it: the raw `*_response` text signed with Alipay's key."""
    if sign == "auto":
        sig = keys.alipay_key.sign((signed_text or response).encode(), padding.PKCS1v15(), hashes.SHA256())
        sign = base64.b64encode(sig).decode()
    tail = f',"sign":"{sign}"' if sign is not None else ""
    return f'{{"{response_key}":{response},"alipay_cert_sn":"abc"{tail}}}'.encode()


SUCCESS = '{"code":"10000","msg":"Success","out_trade_no":"T{1}","note":"a \\"}\\" b","total_amount":"88.88"}'


def test_alipay_verifies_answer_signed_by_the_sdk_and_rejects_tampering(rsa_keys: RsaKeys) -> None:
    signer = make_signer(alipay_spec(rsa_keys), "alipay")
    # Signed with python-alipay-sdk's own signer holding Alipay's key.
    sdk_sign = sdk(rsa_keys, rsa_keys.alipay_private)._sign(SUCCESS)
    body = alipay_answer(rsa_keys, "alipay_trade_query_response", SUCCESS, sign=sdk_sign)
    signer.verify_response(200, {}, body)
    signer.verify_response(200, {}, alipay_answer(rsa_keys, "alipay_trade_query_response", SUCCESS))

    tampered = body.replace(b"88.88", b"99.99")
    with pytest.raises(GatewayError) as info:
        signer.verify_response(200, {}, tampered)
    assert info.value.code == -1004
    assert info.value.message == "alipay: provider answer signature invalid"


def test_alipay_cuts_the_raw_response_text(rsa_keys: RsaKeys) -> None:
    # Braces and quotes inside strings, whitespace and non-ASCII: the signed text is exactly the raw span.
    pretty = '{\n  "code": "10000",\n  "msg": "成功 }{",\n  "list": [{"a": 1}, {"b": "\\u4e2d"}]\n}'
    body = b'{ "alipay_trade_query_response" : ' + pretty.encode() + b' , "sign":"x" }'
    raw, parsed, sign = split_answer(body.decode())
    assert raw == pretty and parsed["msg"] == "成功 }{" and sign == "x"

    signer = make_signer(alipay_spec(rsa_keys))
    sig = base64.b64encode(rsa_keys.alipay_key.sign(pretty.encode(), padding.PKCS1v15(), hashes.SHA256()))
    signer.verify_response(200, {}, body.replace(b'"x"', b'"' + sig + b'"'))

    # On an ordinary answer, the SDK's own cutter finds the same text.
    plain = alipay_answer(rsa_keys, "alipay_trade_query_response", '{"code":"10000","msg":"Success"}')
    assert sdk(rsa_keys)._get_string_to_be_signed(plain.decode(), "alipay_trade_query_response") == \
        split_answer(plain.decode())[0]


def test_alipay_gbk_answer_and_escaped_slash(rsa_keys: RsaKeys) -> None:
    signer = make_signer(alipay_spec(rsa_keys))
    response = '{"code":"10000","msg":"成功"}'
    sig = base64.b64encode(
        rsa_keys.alipay_key.sign(response.encode("gbk"), padding.PKCS1v15(), hashes.SHA256()))
    body = b'{"alipay_trade_query_response":' + response.encode("gbk") + b',"sign":"' + sig + b'"}'
    signer.verify_response(200, {}, body)

    # Alipay signs some answers over the unescaped "/" while the body escapes it; its SDKs accept that.
    escaped = '{"code":"10000","msg":"Success","url":"https:\\/\\/example.com\\/x"}'
    signer.verify_response(200, {}, alipay_answer(rsa_keys, "alipay_trade_query_response", escaped,
                                                  signed_text=escaped.replace("\\/", "/")))


def test_alipay_error_answers(rsa_keys: RsaKeys) -> None:
    signer = make_signer(alipay_spec(rsa_keys))
    error = ('{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id",'
             '"sub_msg":"无效的AppID参数"}')
    signer.verify_response(200, {}, alipay_answer(rsa_keys, "error_response", error))  # signed error
    # Unsigned error answers are accepted, as Alipay's own SDKs accept them.
    signer.verify_response(200, {}, alipay_answer(rsa_keys, "error_response", error, sign=None))
    with pytest.raises(GatewayError) as info:
        tampered = alipay_answer(rsa_keys, "error_response", error).replace(b"40002", b"40004")
        signer.verify_response(200, {}, tampered)
    assert info.value.code == -1004


@pytest.mark.parametrize("body", [
    b'{"alipay_trade_query_response":' + SUCCESS.encode() + b"}",  # a success must be signed
    b'{"alipay_trade_query_response":{"trade_status":"TRADE_SUCCESS"}}',  # and so must a codeless one
    b'{"alipay_trade_query_response":' + SUCCESS.encode() + b',"sign":"not base64!"}',
    b"<html>bad gateway</html>",
    b'{"sign":"abc"}',
    b"[1, 2]",
    b'{"alipay_x_response":' + b"[" * 100_000,  # nesting deeper than the recursion limit
])
def test_alipay_unverifiable_answers_are_1004(rsa_keys: RsaKeys, body: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        make_signer(alipay_spec(rsa_keys)).verify_response(200, {}, body)
    assert info.value.code == -1004 and "provider answer signature invalid" in info.value.message


def test_alipay_without_public_key_or_on_http_errors_does_not_verify(rsa_keys: RsaKeys) -> None:
    no_key = make_signer(spec(type="alipay_rsa2", app_id="1", private_key=rsa_keys.app_pkcs8))
    no_key.verify_response(200, {}, b"anything")
    make_signer(alipay_spec(rsa_keys)).verify_response(502, {}, b"<html>bad gateway</html>")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----",
     "private_key is not a usable RSA private key"),
    ("private_key", "definitely not base64 !!", "neither a PEM block nor base64"),
    ("private_key", "EC", "not an RSA key"),
    ("alipay_public_key", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
     "alipay_public_key is not a usable"),
])
def test_alipay_bad_key_is_a_validation_error(rsa_keys: RsaKeys, field: str, value: str, needle: str) -> None:
    if value == "EC":
        value = _pem_private(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8)
    fields = {"type": "alipay_rsa2", "app_id": "1", "private_key": rsa_keys.app_pkcs8, field: value}

    class Service(BaseModel):  # as a rule file holds it: the outer model's config does not hide inputs
        signing: SigningSpec

    for validate in (AlipayRsa2Signing.model_validate, SPEC_ADAPTER.validate_python,
                     lambda f: Service.model_validate({"signing": f})):
        with pytest.raises(ValidationError) as info:
            validate(fields)
        text = str(info.value)
        assert needle in text and field in text
        assert value not in text and "MIIB" not in text  # the key itself is never echoed
        assert all(value not in repr(e.get("input")) for e in info.value.errors())


def test_alipay_keys_from_files(rsa_keys: RsaKeys, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "app.pem").write_text(rsa_keys.app_pkcs1)
    (tmp_path / "keys" / "alipay.pem").write_text(bare(rsa_keys.alipay_public))
    loaded = AlipayRsa2Signing.model_validate(
        {"type": "alipay_rsa2", "app_id": "1", "private_key": "file:keys/app.pem",
         "alipay_public_key": "file:keys/alipay.pem"},
        context={"base_dir": str(tmp_path)},
    )
    assert loaded.private_key.get_secret_value() == rsa_keys.app_pkcs1
    signer = make_signer(loaded)
    signer.sign(make_req("GET", "https://openapi.alipay.com/gateway.do?method=alipay.x"), NOW)
    signer.verify_response(200, {}, alipay_answer(rsa_keys, "alipay_x_response", '{"code":"10000"}'))

    broken = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    (tmp_path / "keys" / "broken.pem").write_text(broken)
    with pytest.raises(ValidationError, match="private_key is not a usable RSA private key"):
        AlipayRsa2Signing.model_validate(
            {"type": "alipay_rsa2", "app_id": "1", "private_key": "file:keys/broken.pem"},
            context={"base_dir": str(tmp_path)},
        )
