"""SPEC 6 signing end to end: legacy applications using the vendors' own SDKs, configured with
placeholder keys, go through a real gateway and succeed against fake providers that check every
signature with the real keys, which only the gateway holds.

Each fake provider checks what it receives the way the vendor does, with the vendor's own code where
there is one (botocore's signer, tencentcloud-sdk-python's TC3 function, python-alipay-sdk's RSA
verifier), and refuses anything else; each test also shows that the same SDK call made directly to
the fake, with the placeholder keys, is refused, so the checks are not vacuous.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import wait_until
from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "legacy", "legacy-proxy-pass-7f3a"  # a vendor SDK: provider bodies kept (raw)
OPS, OPS_SECRET = "ops", "ops-proxy-pass-91c2"  # a plain HTTP client: the unified envelope

# The real keys: only the gateway (through its environment) and the fakes know them.
AWS_KEY_ID, AWS_SECRET = "AKIAGATEWAYREAL4X7Q2", "gwRealAwsSecret/9fK2mZq8Vt+Lp3Rw0aXyBnEe5Hc"
TC_SECRET_ID, TC_SECRET_KEY = "AKIDgatewayRealTencentId7Hq2", "gwRealTencentKey5Rz8Kp1Wm4Ns"
HMAC_SECRET = "gw-real-partner-hmac-6Tq9Lx2Vb"
ALIPAY_APPID = "2021004100000001"

# What the applications are configured with: placeholders the providers would refuse.
PH_AWS_KEY_ID, PH_AWS_SECRET = "AKIAPLACEHOLDER00000", "placeholder-aws-secret-key-do-not-use"
PH_TC_SECRET_ID, PH_TC_SECRET_KEY = "AKIDplaceholderTencentId0000", "placeholderTencentKey0000"
PH_ALIPAY_APPID = "2021000000000000"
PH_HMAC_SIGNATURE = "placeholder-signature-from-the-app"

REGION = "us-east-1"
BUCKET = "legacy-bucket"
TC_REGION = "ap-guangzhou"
SKEW = 300  # seconds a fake accepts between a request's timestamp and its own clock
SHANGHAI = timezone(timedelta(hours=8))  # Alipay's timestamps are Beijing time


# ------------------------------------------------------------------------------------------- keys


def _pem_private(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def _pem_public(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class AlipayKeys:
    """The app's real key pair (its public half registered with Alipay), Alipay's own key pair, and
    the throwaway key the legacy app is configured with."""

    def __init__(self) -> None:
        app, alipay, placeholder = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                    for _ in range(3))
        self.app_private, self.app_public = _pem_private(app), _pem_public(app)
        self.alipay_private, self.alipay_public = _pem_private(alipay), _pem_public(alipay)
        self.placeholder_private = _pem_private(placeholder)


@pytest.fixture(scope="module")
def alipay_keys() -> AlipayKeys:
    return AlipayKeys()


# ----------------------------------------------------------------------------------- fake providers


def _recent(ts: float) -> bool:
    return abs(time.time() - ts) <= SKEW


class FakeAws:
    """S3 (PUT/GET of one object) and DynamoDB (GetItem), checking SigV4 with botocore's own signer
    holding the real secret; 403 as AWS answers on any mismatch."""

    def __init__(self) -> None:
        self.http = FakeProvider()
        self.objects: dict[str, tuple[bytes, str]] = {}  # key -> (content, crc32 checksum header)
        self.refused: list[str] = []
        self.http.on("PUT", "/hello.txt", self.put_object)
        self.http.on("GET", "/hello.txt", self.get_object)
        # The same object path-style, as an SDK pointed straight at the fake names it.
        self.http.on("PUT", f"/{BUCKET}/hello.txt", self.put_object)
        self.http.on("POST", "/", self.dynamodb)

    def check(self, seen: Seen, service: str) -> str | None:
        """Why the request's signature is not AWS's, or None when it is."""
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                             r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
                             seen.headers.get("authorization", ""))
        if match is None:
            return "MissingAuthenticationToken"
        key_id, date, region, svc, signed, signature = match.groups()
        if key_id != AWS_KEY_ID:
            return "InvalidAccessKeyId"
        amz_date = seen.headers.get("x-amz-date", "")
        if (region, svc) != (REGION, service) or not amz_date.startswith(date):
            return "SignatureDoesNotMatch"
        if not _recent(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))):
            return "RequestTimeTooSkewed"
        # The request as received, with exactly the headers it says it signed.
        headers = {name: seen.headers[name] for name in signed.split(";") if name in seen.headers}
        if len(headers) != len(signed.split(";")):
            return "SignatureDoesNotMatch"
        request = AWSRequest(method=seen.method, url=f"http://{seen.headers['host']}{seen.path}",
                             headers=headers, data=seen.body)
        request.context["timestamp"] = amz_date
        auth = (S3SigV4Auth if service == "s3" else SigV4Auth)(Credentials(AWS_KEY_ID, AWS_SECRET), svc, region)
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if auth.signed_headers(auth.headers_to_sign(request)) != signed:
            return "SignatureDoesNotMatch"
        return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"

    def refuse(self, code: str) -> Reply:
        self.refused.append(code)
        xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>refused</Message></Error>"
        return Reply(403, xml.encode(), {"Content-Type": "application/xml"})

    def put_object(self, seen: Seen) -> Reply:
        if (why := self.check(seen, "s3")) is not None:
            return self.refuse(why)
        content_hash = seen.headers.get("x-amz-content-sha256", "")
        if content_hash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            content, trailers = decode_aws_chunked(seen.body)
        else:
            content, trailers = seen.body, {}
            if content_hash != hashlib.sha256(content).hexdigest():
                return self.refuse("XAmzContentSHA256Mismatch")
        crc = base64.b64encode(struct.pack(">I", zlib.crc32(content))).decode()
        if trailers.get("x-amz-checksum-crc32", crc) != crc:
            return self.refuse("BadDigest")
        if "x-amz-decoded-content-length" in seen.headers and \
                int(seen.headers["x-amz-decoded-content-length"]) != len(content):
            return self.refuse("IncompleteBody")
        self.objects[urlsplit(seen.path).path.rsplit("/", 1)[-1]] = (content, crc)
        return Reply(200, b"", {"ETag": f'"{hashlib.md5(content).hexdigest()}"'})

    def get_object(self, seen: Seen) -> Reply:
        if (why := self.check(seen, "s3")) is not None:
            return self.refuse(why)
        stored = self.objects.get(urlsplit(seen.path).path.rsplit("/", 1)[-1])
        if stored is None:
            return Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})
        content, crc = stored
        return Reply(200, content, {"Content-Type": "text/plain", "ETag": f'"{hashlib.md5(content).hexdigest()}"',
                                    "x-amz-checksum-crc32": crc})

    def dynamodb(self, seen: Seen) -> Reply:
        if (why := self.check(seen, "dynamodb")) is not None:
            self.refused.append(why)
            body = {"__type": f"com.amazon.coral.service#{why}Exception", "message": "refused"}
            return Reply(400, json.dumps(body).encode(), {"Content-Type": "application/x-amz-json-1.0"})
        if seen.headers.get("x-amz-target") != "DynamoDB_20120810.GetItem":
            return Reply(400, b'{"__type": "UnknownOperationException"}',
                         {"Content-Type": "application/x-amz-json-1.0"})
        request = json.loads(seen.body)
        item = {"id": request["Key"]["id"], "name": {"S": "widget"}}
        return Reply(200, json.dumps({"Item": item}).encode(), {"Content-Type": "application/x-amz-json-1.0"})


def decode_aws_chunked(body: bytes) -> tuple[bytes, dict[str, str]]:
    """The content and trailers of an `aws-chunked` body (unsigned chunks, as boto3 sends them)."""
    content, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            break
        content += body[pos:pos + size]
        pos += size + 2
    trailers = {}
    for line in body[pos:].decode().split("\r\n"):
        if ":" in line:
            name, value = line.split(":", 1)
            trailers[name.strip().lower()] = value.strip()
    return content, trailers


class FakeTencent:
    """Tencent Cloud API 3.0 (cvm): TC3-HMAC-SHA256 recomputed with the SDK's own function and the
    real key; answers `{"Response": {...}}` with HTTP 200, errors included, as Tencent does."""

    def __init__(self) -> None:
        self.http = FakeProvider()
        self.http.on("POST", "/", self.handle)

    def check(self, seen: Seen) -> str | None:
        from tencentcloud.common.common_client import CommonClient
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.http.request import RequestInternal

        match = re.fullmatch(r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d\d-\d\d)/([a-z]+)/tc3_request, "
                             r"SignedHeaders=content-type;host, Signature=([0-9a-f]{64})",
                             seen.headers.get("authorization", ""))
        if match is None:
            return "AuthFailure.InvalidAuthorization"
        secret_id, date, service, signature = match.groups()
        if secret_id != TC_SECRET_ID:
            return "AuthFailure.SecretIdNotFound"
        timestamp = int(seen.headers.get("x-tc-timestamp", "0"))
        if not _recent(timestamp):
            return "AuthFailure.SignatureExpire"
        if service != "cvm" or date != time.strftime("%Y-%m-%d", time.gmtime(timestamp)):
            return "AuthFailure.SignatureFailure"
        # The request as received, fed to the SDK's own TC3 code with the real key.
        req = RequestInternal(seen.headers["host"], seen.method, urlsplit(seen.path).path)
        req.header = {"Content-Type": seen.headers["content-type"], "Host": seen.headers["host"],
                      "X-TC-Timestamp": str(timestamp)}
        req.data = seen.body.decode()
        client = CommonClient("cvm", "2017-03-12", Credential(TC_SECRET_ID, TC_SECRET_KEY), TC_REGION)
        expected = client._get_tc3_signature(None, req, date, "cvm", TC_SECRET_KEY)
        return None if hmac.compare_digest(expected, signature) else "AuthFailure.SignatureFailure"

    def handle(self, seen: Seen) -> Reply:
        request_id = str(uuid.uuid4())
        if (why := self.check(seen)) is not None:
            return Reply(200, {"Response": {"Error": {"Code": why, "Message": "signature refused"},
                                            "RequestId": request_id}})
        if seen.headers.get("x-tc-action") != "DescribeInstances" or seen.headers.get("x-tc-region") != TC_REGION:
            return Reply(200, {"Response": {"Error": {"Code": "InvalidAction", "Message": "no such action here"},
                                            "RequestId": request_id}})
        limit = json.loads(seen.body)["Limit"]
        instances = [{"InstanceId": f"ins-{n:08d}", "InstanceName": f"web-{n}"} for n in range(limit)]
        return Reply(200, {"Response": {"TotalCount": limit, "InstanceSet": instances, "RequestId": request_id}})


class FakeAlipay:
    """openapi.alipay.com/gateway.do: checks the RSA2 sign with the app's real public key and signs
    its answers with Alipay's private key, both through python-alipay-sdk's own RSA code."""

    def __init__(self, keys: AlipayKeys) -> None:
        from alipay import AliPay

        # Alipay's side of the keys: its own private key signs, the app's public key verifies.
        self.sdk = AliPay(appid=ALIPAY_APPID, app_notify_url=None, app_private_key_string=keys.alipay_private,
                          alipay_public_key_string=keys.app_public, sign_type="RSA2")
        self.http = FakeProvider()
        self.http.on("GET", "/gateway.do", self.handle)
        self.refused: list[str] = []

    def check(self, params: dict[str, str]) -> str | None:
        if params.get("app_id") != ALIPAY_APPID:
            return "isv.invalid-app-id"
        if params.get("sign_type") != "RSA2" or "sign" not in params:
            return "isv.invalid-signature-type"
        unsigned = {k: v for k, v in params.items() if k != "sign" and v}
        message = "&".join(f"{k}={v}" for k, v in self.sdk._ordered_data(unsigned))
        if not self.sdk._verify(message, params["sign"]):
            return "isv.invalid-signature"
        try:
            sent = datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
        except ValueError:
            return "isv.invalid-timestamp"
        return None if _recent(sent.timestamp()) else "isv.invalid-timestamp"

    def handle(self, seen: Seen) -> Reply:
        params = seen.query
        response_key = params.get("method", "").replace(".", "_") + "_response"
        if (why := self.check(params)) is not None:
            self.refused.append(why)
            error = {"code": "40002", "msg": "Invalid Arguments", "sub_code": why, "sub_msg": "refused"}
            return Reply(200, json.dumps({response_key: error}).encode(),
                         {"Content-Type": "application/json;charset=utf-8"})
        biz = json.loads(params["biz_content"])
        response = json.dumps({"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                               "trade_no": "2024010122001400000000000001", "trade_status": "TRADE_SUCCESS",
                               "total_amount": "88.88"}, separators=(",", ":"))
        sign = self.sdk._sign(response)
        if biz["out_trade_no"].startswith("TAMPERED"):
            response = response.replace("88.88", "0.01")  # changed after signing, as by a man in the middle
        body = f'{{"{response_key}":{response},"sign":"{sign}"}}'
        return Reply(200, body.encode(), {"Content-Type": "application/json;charset=utf-8"})


class FakePartner:
    """A generic REST provider checking `X-Signature` = hex HMAC-SHA256 of the rule's string_to_sign."""

    TEMPLATE = "{method}|{host}|{path}|{timestamp}|{nonce}|{body_sha256}"

    def __init__(self) -> None:
        self.http = FakeProvider()
        self.verdicts: list[bool] = []
        self.lock = threading.Lock()
        self.flaky_calls = 0
        self.http.on("POST", "/base/v1/orders", self.orders)
        self.http.on("GET", "/base/v1/flaky", self.flaky)

    def check(self, seen: Seen) -> bool:
        h = seen.headers
        text = self.TEMPLATE.format(method=seen.method, host=h.get("host", ""), path=seen.path,
                                    timestamp=h.get("x-timestamp", ""), nonce=h.get("x-nonce", ""),
                                    body_sha256=hashlib.sha256(seen.body).hexdigest())
        expected = hmac.new(HMAC_SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
        ok = (hmac.compare_digest(expected, h.get("x-signature", "")) and _recent(int(h.get("x-timestamp", "0")))
              and len(h.get("x-nonce", "")) >= 16)
        with self.lock:
            self.verdicts.append(ok)
        return ok

    def orders(self, seen: Seen) -> Reply:
        if not self.check(seen):
            return Reply(401, {"error": "bad signature"})
        return Reply(200, {"order": seen.json(), "status": "created"})

    def flaky(self, seen: Seen) -> Reply:
        if not self.check(seen):
            return Reply(401, {"error": "bad signature"})
        with self.lock:
            self.flaky_calls += 1
            first = self.flaky_calls == 1
        if first:
            # Answered after a second, so the retry is signed in a later second than this attempt.
            return Reply(503, {"error": "busy"}, delay=1.1)
        return Reply(200, {"items": [1, 2, 3]})


# ------------------------------------------------------------------------------------------ gateway


class Providers:
    def __init__(self, keys: AlipayKeys) -> None:
        self.aws = FakeAws()
        self.tencent = FakeTencent()
        self.alipay = FakeAlipay(keys)
        self.partner = FakePartner()

    def all(self) -> list[FakeProvider]:
        return [self.aws.http, self.tencent.http, self.alipay.http, self.partner.http]

    def close(self) -> None:
        for fake in self.all():
            fake.close()


@pytest.fixture(scope="module")
def providers(alipay_keys: AlipayKeys) -> Iterator[Providers]:
    fakes = Providers(alipay_keys)
    yield fakes
    fakes.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, providers: Providers,
       alipay_keys: AlipayKeys) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("signing")
    rules = write_rules(tmp / "rules", {
        "s3.yaml": f"""
            service: s3
            hosts: ["*.s3.amazonaws.com", "*.s3.{REGION}.amazonaws.com"]
            upstream: {{url: "{providers.aws.http.url}", timeout: 5s}}
            signing:
              type: aws_sigv4
              access_key_id: "${{AWS_REAL_KEY_ID}}"
              secret_access_key: "${{AWS_REAL_SECRET}}"
              region: {REGION}
              service: s3
            envelope: raw
        """,
        "dynamodb.yaml": f"""
            service: dynamodb
            hosts: [dynamodb.{REGION}.amazonaws.com]
            upstream: {{url: "{providers.aws.http.url}", timeout: 5s}}
            signing:
              type: aws_sigv4
              access_key_id: "${{AWS_REAL_KEY_ID}}"
              secret_access_key: "${{AWS_REAL_SECRET}}"
              region: {REGION}
              service: dynamodb
            envelope: raw
        """,
        "tencent.yaml": f"""
            service: cvm
            hosts: [cvm.tencentcloudapi.com]
            upstream: {{url: "{providers.tencent.http.url}", timeout: 5s}}
            signing:
              type: tencent_tc3
              secret_id: "${{TC_REAL_SECRET_ID}}"
              secret_key: "${{TC_REAL_SECRET_KEY}}"
              service: cvm
              region: {TC_REGION}
        """,
        "alipay.yaml": f"""
            service: alipay
            hosts: [openapi.alipay.com]
            upstream: {{url: "{providers.alipay.http.url}", timeout: 5s}}
            signing:
              type: alipay_rsa2
              app_id: "{ALIPAY_APPID}"
              private_key: "${{ALIPAY_APP_PRIVATE_KEY}}"
              alipay_public_key: "${{ALIPAY_PUBLIC_KEY}}"
            envelope: alipay
        """,
        "partner.yaml": f"""
            service: partner
            hosts: [api.partner.test]
            upstream: {{url: "{providers.partner.http.url}/base", timeout: 5s}}
            signing:
              type: hmac_sha256
              secret: "${{PARTNER_HMAC_SECRET}}"
              header: X-Signature
              timestamp_header: X-Timestamp
              nonce_header: X-Nonce
              string_to_sign: "{FakePartner.TEMPLATE}"
            retry: {{attempts: 2, backoff: 50ms, max_backoff: 200ms, deadline: 10s, on: [503], methods: [GET]}}
            methods:
              create_order: {{method: POST, path: /v1/orders}}
              flaky: {{method: GET, path: /v1/flaky}}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: "${{LEGACY_APP_SECRET}}", envelope: raw}}
              {OPS}: {{secret: "${{OPS_APP_SECRET}}"}}
            gateway: {{require_app: true, unknown_hosts: deny}}
        """,
    })
    env = {
        "AWS_REAL_KEY_ID": AWS_KEY_ID, "AWS_REAL_SECRET": AWS_SECRET,
        "TC_REAL_SECRET_ID": TC_SECRET_ID, "TC_REAL_SECRET_KEY": TC_SECRET_KEY,
        "ALIPAY_APP_PRIVATE_KEY": alipay_keys.app_private, "ALIPAY_PUBLIC_KEY": alipay_keys.alipay_public,
        "PARTNER_HMAC_SECRET": HMAC_SECRET,
        "LEGACY_APP_SECRET": APP_SECRET, "OPS_APP_SECRET": OPS_SECRET,
    }
    gateway = Gateway(rules, confdir, env=env).start()
    yield gateway
    gateway.stop()


def leaked(text: str, values: list[str]) -> list[str]:
    return [value[:12] + "..." for value in values if value in text]


def log_lines_of(gw: Gateway, services: set[str], count: int, after: int = 0) -> list[dict[str, Any]]:
    """The access-log lines of `services` after the first `after` lines, once there are `count` of them."""

    def find() -> list[dict[str, Any]] | None:
        lines = [line for line in gw.log_lines()[after:] if line["service"] in services]
        return lines if len(lines) >= count else None

    return wait_until(find, 5, what=f"{count} access-log line(s) of {sorted(services)}")  # type: ignore[return-value]


def assert_never_reached(hits: list[Seen], *values: str) -> None:
    """None of `values` was in any request line, header or body of `hits`."""
    for seen in hits:
        blob = seen.path + "\n" + json.dumps(seen.headers) + "\n" + seen.body.decode("latin-1")
        assert not leaked(blob, list(values)), f"{seen.method} {seen.path} carried {leaked(blob, list(values))}"


# ------------------------------------------------------------------------------------------- clients


def boto3_client(service: str, gw: Gateway | None, endpoint_url: str | None = None,
                 key_id: str = PH_AWS_KEY_ID) -> Any:
    """A boto3 client as a legacy app has it: placeholder keys, the gateway as its HTTPS proxy
    (without `gw`: straight to `endpoint_url`)."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=REGION, retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=15, proxies={"https": gw.proxy(APP, APP_SECRET)} if gw else None,
                    s3={"addressing_style": "virtual" if gw else "path"})
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=PH_AWS_SECRET,
                                    region_name=REGION)
    return session.client(service, config=config, verify=gw.ca if gw else None, endpoint_url=endpoint_url)


def tencent_client(gw: Gateway | None, endpoint: str = "cvm.tencentcloudapi.com",
                   secret_id: str = PH_TC_SECRET_ID) -> Any:
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    if gw is not None:
        http = HttpProfile(endpoint=endpoint, reqTimeout=15, proxy=gw.proxy(APP, APP_SECRET), certification=gw.ca)
    else:
        http = HttpProfile(protocol="http", endpoint=endpoint, reqTimeout=15)
    return CommonClient("cvm", "2017-03-12", Credential(secret_id, PH_TC_SECRET_KEY), TC_REGION,
                        ClientProfile(httpProfile=http))


def alipay_client(keys: AlipayKeys, appid: str = PH_ALIPAY_APPID) -> Any:
    """python-alipay-sdk as a legacy app has it: a throwaway app key the gateway never sees, a
    placeholder appid, and Alipay's public key (public, so the app may keep verifying answers)."""
    from alipay import AliPay
    from alipay.utils import AliPayConfig

    return AliPay(appid=appid, app_notify_url=None, app_private_key_string=keys.placeholder_private,
                  alipay_public_key_string=keys.alipay_public, sign_type="RSA2", config=AliPayConfig(timeout=15))


@pytest.fixture
def alipay_via(monkeypatch: pytest.MonkeyPatch) -> Any:
    """python-alipay-sdk does its HTTP with urllib's urlopen, which takes the proxy from HTTPS_PROXY
    and the CA from SSL_CERT_FILE: the environment a legacy app is started with. urllib builds its
    opener once per process and keeps the proxies it read then, so it is reset here, as in a new
    process."""

    def use(gw: Gateway) -> None:
        for name in ("NO_PROXY", "no_proxy", "https_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", gw.proxy(APP, APP_SECRET))
        monkeypatch.setenv("SSL_CERT_FILE", gw.ca)
        monkeypatch.setattr(urllib.request, "_opener", None)

    return use


# --------------------------------------------------------------------------------------------- tests


def test_boto3_s3_and_dynamodb_with_placeholder_keys(gw: Gateway, providers: Providers) -> None:
    from botocore.exceptions import ClientError

    aws = providers.aws
    # Straight to the fake, the placeholder keys are refused, even under the real key id: the
    # fake's signature check has teeth.
    direct = aws.http.url
    for key_id, code in ((PH_AWS_KEY_ID, "InvalidAccessKeyId"), (AWS_KEY_ID, "SignatureDoesNotMatch")):
        with pytest.raises(ClientError) as refused:
            boto3_client("s3", None, direct, key_id).put_object(Bucket=BUCKET, Key="hello.txt", Body=b"x")
        assert refused.value.response["Error"]["Code"] == code
    aws.refused.clear()
    before, logged_before = len(aws.http.hits()), len(gw.log_lines())

    s3 = boto3_client("s3", gw)
    content = b"hello from a legacy app \xe2\x9c\x93\n" * 50
    put = s3.put_object(Bucket=BUCKET, Key="hello.txt", Body=content, ContentType="text/plain")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ETag"] == f'"{hashlib.md5(content).hexdigest()}"'
    got = s3.get_object(Bucket=BUCKET, Key="hello.txt")
    assert got["Body"].read() == content  # boto3 also checked the crc32 the fake sent with it

    ddb = boto3_client("dynamodb", gw)
    item = ddb.get_item(TableName="orders", Key={"id": {"S": "42"}})
    assert item["Item"] == {"id": {"S": "42"}, "name": {"S": "widget"}}

    assert aws.refused == []
    hits = aws.http.hits()[before:]
    assert [(s.method, s.route) for s in hits] == [("PUT", "/hello.txt"), ("GET", "/hello.txt"), ("POST", "/")]
    assert all(f"Credential={AWS_KEY_ID}/" in s.headers["authorization"] for s in hits)
    # The wildcard host keeps the bucket the caller named, and the fake checked the signature over it;
    # the connection went to the rule's upstream all the same.
    assert [s.headers["host"] for s in hits[:2]] == [f"{BUCKET}.s3.amazonaws.com"] * 2
    assert hits[2].headers["host"] == f"127.0.0.1:{aws.http.port}"
    assert hits[0].headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"  # boto3's own choice
    assert_never_reached(hits, PH_AWS_KEY_ID, PH_AWS_SECRET, AWS_SECRET)
    assert all("proxy-authorization" not in s.headers for s in hits)
    lines = log_lines_of(gw, {"s3", "dynamodb"}, 3, logged_before)
    assert [(line["service"], line["http_method"], line["app"], line["code"]) for line in lines] == [
        ("s3", "PUT", APP, 0), ("s3", "GET", APP, 0), ("dynamodb", "POST", APP, 0)]


def test_tencent_sdk_with_placeholder_keys(gw: Gateway, providers: Providers) -> None:
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    fake = providers.tencent.http
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's datetime.utcfromtimestamp
        for secret_id, code in ((PH_TC_SECRET_ID, "AuthFailure.SecretIdNotFound"),
                                (TC_SECRET_ID, "AuthFailure.SignatureFailure")):
            with pytest.raises(TencentCloudSDKException) as refused:
                tencent_client(None, f"127.0.0.1:{fake.port}", secret_id).call_json("DescribeInstances", {"Limit": 1})
            assert refused.value.code == code
        before, logged_before = len(fake.hits()), len(gw.log_lines())

        answer = tencent_client(gw).call_json("DescribeInstances", {"Limit": 2})
    assert answer["Response"]["TotalCount"] == 2
    assert [i["InstanceId"] for i in answer["Response"]["InstanceSet"]] == ["ins-00000000", "ins-00000001"]
    (seen,) = fake.hits()[before:]
    assert seen.headers["authorization"].startswith(f"TC3-HMAC-SHA256 Credential={TC_SECRET_ID}/")
    assert seen.headers["x-tc-action"] == "DescribeInstances" and seen.headers["x-tc-version"] == "2017-03-12"
    assert_never_reached([seen], PH_TC_SECRET_ID, PH_TC_SECRET_KEY, TC_SECRET_KEY)
    (line,) = log_lines_of(gw, {"cvm"}, 1, logged_before)
    assert (line["app"], line["code"], line["status"]) == (APP, 0, 200)


def test_alipay_sdk_with_a_placeholder_key(gw: Gateway, providers: Providers, alipay_keys: AlipayKeys,
                                           alipay_via: Any) -> None:
    from alipay.exceptions import AliPayException

    fake = providers.alipay
    # Straight to the fake, the placeholder key is refused, with the placeholder appid or the real one.
    fake.refused.clear()
    for appid in (PH_ALIPAY_APPID, ALIPAY_APPID):
        sdk = alipay_client(alipay_keys, appid)
        sdk._gateway = f"{fake.http.url}/gateway.do"
        with pytest.raises(AliPayException):
            sdk.api_alipay_trade_query(out_trade_no="T-direct")
    assert fake.refused == ["isv.invalid-app-id", "isv.invalid-signature"]
    fake.refused.clear()
    before, logged_before = len(fake.http.hits()), len(gw.log_lines())

    alipay_via(gw)
    sdk = alipay_client(alipay_keys)  # the real URL: https://openapi.alipay.com/gateway.do
    answer = sdk.api_alipay_trade_query(out_trade_no="T-20240101-0001")  # the SDK verified Alipay's sign
    assert answer["code"] == "10000" and answer["out_trade_no"] == "T-20240101-0001"
    assert answer["total_amount"] == "88.88"
    assert fake.refused == []
    (seen,) = fake.http.hits("/gateway.do")[before:]
    assert seen.query["app_id"] == ALIPAY_APPID and seen.query["method"] == "alipay.trade.query"
    assert_never_reached([seen], PH_ALIPAY_APPID, alipay_keys.placeholder_private.splitlines()[1])
    (line,) = log_lines_of(gw, {"alipay"}, 1, logged_before)
    assert (line["app"], line["code"], line["status"]) == (APP, 0, 200)


def test_alipay_answer_with_a_tampered_sign_is_1004(gw: Gateway, providers: Providers, alipay_keys: AlipayKeys,
                                                    alipay_via: Any) -> None:
    # A plain client gets the envelope.
    sdk = alipay_client(alipay_keys)
    query = sdk.sign_data(sdk.build_body("alipay.trade.query", {"out_trade_no": "TAMPERED-1"}))
    r = requests.get(f"https://openapi.alipay.com/gateway.do?{query}", proxies=gw.proxies(OPS, OPS_SECRET),
                     verify=gw.ca, timeout=15)
    body = r.json()
    assert r.status_code == 502 and body["code"] == -1004 and body["source"] == "upstream", body
    assert r.headers["X-Gateway-Code"] == "-1004"
    assert "0.01" not in r.text  # nothing of the forged answer reaches the caller
    line = gw.log_for(body["request_id"])
    assert line["code"] == -1004 and line["service"] == "alipay"

    # The SDK's app keeps provider bodies (envelope: raw), but is not handed a forged one: it gets
    # the -1004 envelope, which urllib (the SDK's HTTP) raises as an HTTP 502.
    alipay_via(gw)
    before = len(gw.log_lines())
    with pytest.raises(urllib.error.HTTPError) as refused:
        sdk.api_alipay_trade_query(out_trade_no="TAMPERED-2")
    assert refused.value.code == 502 and refused.value.headers["X-Gateway-Code"] == "-1004"
    text = refused.value.read().decode()
    assert json.loads(text)["code"] == -1004 and "0.01" not in text
    (line,) = log_lines_of(gw, {"alipay"}, 1, before)
    assert (line["app"], line["code"], line["status"]) == (APP, -1004, 502)
    assert providers.alipay.refused == []  # the gateway's requests were fine; the answers were not


def test_hmac_signature_fresh_on_every_attempt(gw: Gateway, providers: Providers) -> None:
    partner = providers.partner
    with partner.lock:
        partner.flaky_calls, partner.verdicts = 0, []
    stale = {"X-Signature": PH_HMAC_SIGNATURE, "X-Nonce": "placeholder-nonce", "X-Timestamp": "1"}
    # Straight to the fake, what the app signs (nothing valid) is refused.
    direct = requests.post(f"{partner.http.url}/base/v1/orders", json={"sku": "A-1"}, headers=stale, timeout=15)
    assert direct.status_code == 401
    with partner.lock:
        partner.verdicts = []
    before = len(partner.http.hits())
    proxies = gw.proxies(OPS, OPS_SECRET)
    r = requests.post("http://api.partner.test/v1/orders?channel=web&note=a%20b", json={"sku": "A-1", "qty": 2},
                      headers=stale, proxies=proxies, timeout=15)
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    assert r.json()["data"] == {"order": {"sku": "A-1", "qty": 2}, "status": "created"}

    r = requests.get("http://api.partner.test/v1/flaky", headers=stale, proxies=proxies, timeout=15)
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    assert r.headers["X-Gateway-Attempts"] == "2"
    first, second = [s for s in partner.http.hits()[before:] if s.route == "/base/v1/flaky"]
    assert partner.verdicts == [True, True, True]  # every attempt carried a valid signature
    assert first.headers["x-nonce"] != second.headers["x-nonce"]
    assert int(second.headers["x-timestamp"]) > int(first.headers["x-timestamp"])
    assert first.headers["x-signature"] != second.headers["x-signature"]
    assert_never_reached(partner.http.hits()[before:], PH_HMAC_SIGNATURE, "placeholder-nonce", HMAC_SECRET)
    line = gw.log_for(r.headers["X-Request-ID"])
    assert (line["service"], line["method"], line["attempts"], line["code"]) == ("partner", "flaky", 2, 0)


def test_no_key_in_the_access_log_or_the_output(gw: Gateway, providers: Providers, alipay_keys: AlipayKeys,
                                                 alipay_via: Any) -> None:
    # One call to each provider, so this holds whatever ran before.
    boto3_client("s3", gw).put_object(Bucket=BUCKET, Key="hello.txt", Body=b"again")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tencent_client(gw).call_json("DescribeInstances", {"Limit": 1})
    alipay_via(gw)
    alipay_client(alipay_keys).api_alipay_trade_query(out_trade_no="T-secrets")
    requests.get("http://api.partner.test/v1/flaky", headers={"X-Signature": PH_HMAC_SIGNATURE},
                 proxies=gw.proxies(OPS, OPS_SECRET), timeout=15)

    def pem_lines(pem: str) -> list[str]:
        return [line for line in pem.strip().splitlines() if not line.startswith("-----")]

    keys = [AWS_SECRET, TC_SECRET_KEY, HMAC_SECRET, PH_AWS_SECRET, PH_TC_SECRET_KEY, PH_HMAC_SIGNATURE,
            PH_AWS_KEY_ID, PH_TC_SECRET_ID, APP_SECRET, OPS_SECRET,
            *pem_lines(alipay_keys.app_private), *pem_lines(alipay_keys.placeholder_private)]
    wait_until(lambda: {"s3", "cvm", "alipay", "partner"} <= {line["service"] for line in gw.log_lines()}, 5,
               what="access-log lines of every provider")
    log = gw.log_path.read_text()
    assert not leaked(log, keys), leaked(log, keys)
    output = gw.output()
    assert not leaked(output, keys), leaked(output, keys)


def test_tencent_cvm_client_with_placeholder_keys(gw: Gateway, providers: Providers) -> None:
    """tencentcloud-sdk-python's own CvmClient (not only the CommonClient), as an app uses it."""
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.cvm.v20170312 import cvm_client, models

    fake = providers.tencent.http
    before = len(fake.hits())
    # The SDK hard-codes certifi's bundle: the gateway's CA is given with `certification`.
    http = HttpProfile(endpoint="cvm.tencentcloudapi.com", reqTimeout=15, proxy=gw.proxy(APP, APP_SECRET),
                       certification=gw.ca)
    client = cvm_client.CvmClient(Credential(PH_TC_SECRET_ID, PH_TC_SECRET_KEY), TC_REGION,
                                  ClientProfile(httpProfile=http))
    request = models.DescribeInstancesRequest()
    request.Limit = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        answer = client.DescribeInstances(request)
    assert answer.TotalCount == 3 and [i.InstanceId for i in answer.InstanceSet][:1] == ["ins-00000000"]
    (seen,) = fake.hits()[before:]
    assert seen.headers["authorization"].startswith(f"TC3-HMAC-SHA256 Credential={TC_SECRET_ID}/")
    assert_never_reached([seen], PH_TC_SECRET_ID, PH_TC_SECRET_KEY, TC_SECRET_KEY)
