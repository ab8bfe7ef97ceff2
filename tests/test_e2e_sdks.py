"""Vendor SDKs, unmodified, through a real gateway: boto3 against a local moto S3 (virtual-hosted and
path style), and the SigV4 signature over the host the caller named."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "storage-app", "storage-proxy-pass-5k2q"
REGION = "us-east-1"
FIVE_MB = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3_gw(tmp_path_factory: pytest.TempPathFactory, confdir: Path, moto_url: str) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sdks")
    rules = write_rules(tmp / "rules", {
        "s3.yaml": f"""
            service: s3
            hosts: [s3.amazonaws.com, "*.s3.amazonaws.com"]
            upstream: {{url: "{moto_url}", timeout: 10s}}
            signing:
              type: aws_sigv4
              access_key_id: "${{S3_KEY_ID}}"
              secret_access_key: "${{S3_SECRET}}"
              region: {REGION}
              service: s3
            envelope: raw
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: "${{STORAGE_APP_SECRET}}", envelope: raw}}
            gateway: {{require_app: true, unknown_hosts: deny}}
        """,
    })
    env = {"S3_KEY_ID": "AKIAMOTOGATEWAYKEY01", "S3_SECRET": "moto-gateway-secret-0000",
           "STORAGE_APP_SECRET": APP_SECRET}
    gateway = Gateway(rules, confdir, env=env).start()
    yield gateway
    gateway.stop()


def s3_client(gw: Gateway, style: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(region_name=REGION, retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=20, proxies={"https": gw.proxy(APP, APP_SECRET)}, s3={"addressing_style": style})
    session = boto3.session.Session(aws_access_key_id="AKIAPLACEHOLDER00000",
                                    aws_secret_access_key="placeholder", region_name=REGION)
    return session.client("s3", config=config, verify=gw.ca)


def moto_direct(moto_url: str) -> Any:
    """What moto stored, read straight from it (not through the gateway)."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="x",
                        aws_secret_access_key="x")


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_boto3_s3_put_get_head_multipart(s3_gw: Gateway, moto_url: str, style: str) -> None:
    s3 = s3_client(s3_gw, style)
    bucket = f"gw-{style}-bucket"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="notes/hello.txt", Body=b"hello through the gateway")
    assert s3.get_object(Bucket=bucket, Key="notes/hello.txt")["Body"].read() == b"hello through the gateway"

    big = os.urandom(FIVE_MB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == FIVE_MB  # the provider's length, not the empty HEAD body's

    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi.bin")
    parts = []
    for number, chunk in enumerate((big, b"tail of the upload"), start=1):
        part = s3.upload_part(Bucket=bucket, Key="multi.bin", PartNumber=number, UploadId=upload["UploadId"],
                              Body=chunk)
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="multi.bin", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=bucket, Key="multi.bin")["ContentLength"] == FIVE_MB + 18

    # The bucket is the one the caller named, in either style: moto has it, with the objects in it.
    direct = moto_direct(moto_url)
    keys = sorted(o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["big.bin", "multi.bin", "notes/hello.txt"]
    assert direct.get_object(Bucket=bucket, Key="multi.bin")["Body"].read() == big + b"tail of the upload"
    lines = [line for line in s3_gw.log_lines() if line["service"] == "s3" and bucket in line["url"]]
    assert lines and all(line["code"] == 0 and line["app"] == APP for line in lines)
