"""The pure pieces behind SPEC 18, alone: bounded decoders, linear adapters, strict JSON, file:
references, rule limits, connection deadlines, signature checks."""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib
from pathlib import Path

import brotli
import pytest

from addons.conntrack import ConnectionTracker
from addons.envelope import ProviderAnswer, make_adapter, render
from addons.errors import GatewayError
from addons.identity.directory import AppDirectory
from addons.identity.schema import AppSpec
from addons.identity.signed import SignedRequest
from addons.rules.filerefs import MAX_FILE_REF_BYTES, read_file_ref
from addons.rules.loader import load_sources
from addons.units import parse_duration
from addons.upstream import decompress

MIB = 1024 * 1024
try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]


@pytest.mark.parametrize("encoding,encode", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda d: zlib.compress(d)[2:-4]),
    ("br", brotli.compress), ("zstd", zstd.compress)])
def test_decoders_round_trip_and_stop_at_the_limit(encoding: str, encode: object) -> None:
    data = b'{"a": 1}' * 10_000
    assert decompress.decode(encode(data), encoding, MIB) == data  # type: ignore[operator]
    bomb = encode(bytes(32 * MIB))  # type: ignore[operator]
    start = time.monotonic()
    with pytest.raises(decompress.DecodedTooLarge):
        decompress.decode(bomb, encoding, 4 * MIB)
    assert time.monotonic() - start < 1.0  # stops near the limit, not after inflating everything
    with pytest.raises(ValueError):
        decompress.decode(b"not compressed at all", encoding, MIB)


def test_numbers_beyond_a_float_never_make_invalid_json() -> None:
    verdict = make_adapter("json").classify(ProviderAnswer(200, {"content-type": "application/json"},
                                                           b'{"n": 1e999999, "x": [-1e400]}'), "s.m")
    body = render(verdict.code, verdict.message, verdict.data, "rid")
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in the envelope"))["data"] == {
        "n": "1e999999", "x": ["-1e400"]}
    assert b"NaN" not in render(0, "success", {"v": float("nan")}, "rid")


def test_repeated_xml_elements_take_linear_time() -> None:
    adapter = make_adapter("xml")

    def took(n: int) -> float:
        body = b"<xml><return_code>SUCCESS</return_code>" + b"<i>x</i>" * n + b"</xml>"
        start = time.monotonic()
        verdict = adapter.classify(ProviderAnswer(200, {"content-type": "text/xml"}, body), "s.m")
        assert verdict.code == 0 and len(verdict.data["i"]) == n
        return time.monotonic() - start

    assert took(100_000) < 2.0  # was 6 s: a new list per repeated element


def test_file_references_only_regular_files_under_the_rules_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.pem").write_text("PEM")
    assert read_file_ref("keys/k.pem", str(tmp_path)) == "PEM"
    assert read_file_ref(str(tmp_path / "keys" / "k.pem"), str(tmp_path)) == "PEM"  # absolute, inside
    os.mkfifo(tmp_path / "keys" / "fifo")
    (tmp_path / "keys" / "big.pem").write_bytes(b"x" * (MAX_FILE_REF_BYTES + 1))
    (tmp_path / "keys" / "escape.pem").symlink_to("/etc/hostname")
    for ref, words in [("keys/fifo", "not a regular file"), ("/dev/zero", "outside"), ("../x", "cannot read"),
                       ("/etc/hostname", "outside"), ("keys/escape.pem", "outside"), ("keys/big.pem", "larger"),
                       ("keys/none.pem", "cannot read")]:
        with pytest.raises(ValueError, match=words):
            read_file_ref(ref, str(tmp_path))


def test_remote_documents_cannot_read_local_files_outside_the_rules_directory(tmp_path: Path) -> None:
    doc = 'service: leak\nupstream: {url: "http://127.0.0.1:9", ca: "file:/etc/hostname"}\n'
    _, problems = load_sources([("https://feed.example/rules#1", doc)], tmp_path, env={})
    assert [str(p) for p in problems] == [
        "https://feed.example/rules#1:2: upstream.ca: file:/etc/hostname is outside the rules directory "
        "(only files under it are read)"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, "-1s", 10**9, "99999d"])
def test_durations_must_be_finite_and_sane(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_connection_deadlines() -> None:
    tracker = ConnectionTracker(header_timeout=1.0, client_idle=5.0)
    tracker.opened("slow", 0.0)
    tracker.opened("busy", 0.0)
    tracker.started("busy")  # headers arrived: a call is in flight, no deadline
    assert tracker.expired(0.9) == []
    assert tracker.expired(1.0) == [("slow", "header timeout")]
    tracker.finished("busy", 100.0)
    assert tracker.expired(104.9) == []
    assert tracker.expired(105.0) == [("busy", "idle")]
    assert len(tracker) == 0


def test_signatures_never_raise_and_never_tell_which_apps_exist() -> None:
    apps = AppDirectory({"a": AppSpec.model_validate({"secret": "s"})})
    now = time.time()

    def message(app: str, signature: str) -> str:
        with pytest.raises(GatewayError) as info:
            apps.verify_signature(SignedRequest(app, str(int(now)), "n" * 16, signature), "GET", "/", b"", now)
        assert info.value.code == -2002
        return info.value.message

    assert message("a", "é" * 64) == message("a", "0" * 64) == message("ghost", "0" * 64)
