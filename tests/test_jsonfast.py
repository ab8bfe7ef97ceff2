"""The fast JSON paths give what the stdlib gave: same values, same errors, valid JSON always, and
the provider's body spliced into the envelope only where data is that body unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from addons.envelope import ProviderAnswer, make_adapter, render
from addons.rules.schema import JsonEnvelope


def classify(body: bytes, envelope: Any = "json", content_type: str = "application/json"):  # type: ignore[no-untyped-def]
    return make_adapter(envelope).classify(ProviderAnswer(200, CIMultiDict({"Content-Type": content_type}), body),
                                           "demo.call")


BODIES = [
    b'{"a": 1, "b": [1.5, -0.0, 1e16, true, null], "c": {"d": "\\u00e9\\n"}}',
    b'  [1, 2, 3]\n',
    b'"a string"',
    b'123456789012345678901234567890',      # beyond 64 bits: stays an exact integer
    '{"名字": "值", "emoji": "\U0001f600"}'.encode(),
    b'\xef\xbb\xbf{"bom": true}',             # a UTF-8 BOM is dropped, as before
    b'{"lone": "\\ud800"}',                   # JSON allows it; the stdlib path carries it
    b'{"a": 1, "a": 2}',                      # the last one wins, as before
]


@pytest.mark.parametrize("body", BODIES)
def test_plain_json_envelope_holds_the_same_value_as_the_stdlib_reads(body: bytes) -> None:
    verdict = classify(body)
    expected = json.loads(body.decode("utf-8-sig"))
    assert verdict.code == 0 and verdict.data == expected
    envelope = render(0, "success", verdict.data, "rid-1", verdict.data_json)
    decoded = json.loads(envelope)
    assert decoded == {"code": 0, "message": "success", "data": expected, "request_id": "rid-1"}
    assert list(decoded) == ["code", "message", "data", "request_id"]


@pytest.mark.parametrize("body", [b"{", b'{"a": NaN}', b'{"a": Infinity}', b"[1,]", b'"\xff"', b"01",
                                  b'"a\x01b"', b"[" * 100_000 + b"]" * 100_000])
def test_what_the_stdlib_refused_is_still_refused(body: bytes) -> None:
    verdict = classify(body)
    assert verdict.code == -1004 and verdict.data is None


def test_a_body_in_another_charset_is_read_by_its_charset_and_not_spliced() -> None:
    body = '{"name": "café"}'.encode("latin-1")
    verdict = classify(body, content_type="application/json; charset=latin-1")
    assert verdict.data == {"name": "café"} and verdict.data_json is None
    assert json.loads(render(0, "success", verdict.data, "r", verdict.data_json))["data"] == {"name": "café"}


def test_the_providers_bytes_are_spliced_when_data_is_the_body() -> None:
    body = b'{"z": 1,   "a": [1.10, 2]}'
    verdict = classify(body)
    assert verdict.data_json == body
    assert render(0, "success", verdict.data, "r", verdict.data_json) == (
        b'{"code":0,"message":"success","data":' + body + b',"request_id":"r"}')


def test_a_field_of_the_body_is_encoded_not_spliced() -> None:
    envelope = JsonEnvelope(type="json", success_field="ok", success_values=[True], data_field="result")
    verdict = classify(b'{"ok": true, "result": {"x": 1}}', envelope)
    assert verdict.code == 0 and verdict.data == {"x": 1} and verdict.data_json is None
    whole = classify(b'{"ok": true, "x": 1}', JsonEnvelope(type="json", success_field="ok", success_values=[True]))
    assert whole.data_json == b'{"ok": true, "x": 1}'


def test_numbers_json_cannot_carry_still_give_valid_json() -> None:
    body = render(0, "success", {"inf": float("inf"), "nan": float("nan"), "big": 2**80}, "r")
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in the envelope")) == {
        "code": 0, "message": "success", "data": {"inf": None, "nan": None, "big": 2**80}, "request_id": "r"}


def test_bytes_sets_and_other_objects_render_as_before() -> None:
    import datetime

    data = {"b": b"caf\xc3\xa9", "s": frozenset({1}), "t": (1, 2), "when": datetime.datetime(2026, 1, 2, 3, 4, 5)}
    assert json.loads(render(0, "success", data, "r")) == {
        "code": 0, "message": "success", "request_id": "r",
        "data": {"b": "café", "s": [1], "t": [1, 2], "when": "2026-01-02 03:04:05"}}
    assert json.loads(render(0, "success", b"raw", "r"))["data"] == "raw"
    assert json.loads(render(-2004, "over quota", {1: "int key"}, "r"))["data"] == {"1": "int key"}
    assert render(0, "success", "\ud800", "r") == b'{"code":0,"message":"success","data":"\\ud800","request_id":"r"}'


def test_a_spliced_body_is_parsed_only_when_read() -> None:
    from addons.envelope import SPLICED, SplicedVerdict

    verdict = classify(b'{"items": [1, 2, 3]}')
    assert isinstance(verdict, SplicedVerdict)
    assert verdict.result_data is SPLICED  # the forwarder carries the bytes, not a parsed copy
    assert verdict.data == {"items": [1, 2, 3]}  # parsed on demand, then kept
    assert verdict.result_data == {"items": [1, 2, 3]}
    assert classify(b'{"n": 123456789012345678901234567890}').data == {"n": 123456789012345678901234567890}


def test_a_large_answer_reaches_the_caller_in_the_envelope_unchanged(tmp_path, confdir, fake) -> None:  # type: ignore[no-untyped-def]
    import requests

    from tests.fakes import Reply
    from tests.harness import Gateway, write_rules

    items = [{"id": i, "name": f"item-{i}", "price": i * 1.25, "big": 2**70 + i} for i in range(1500)]
    body = json.dumps({"items": items}, indent=1).encode()  # ~100 KB, pretty-printed as some providers do
    fake.on("GET", "/hello", Reply(200, body, headers={"Content-Type": "application/json"}))
    fake.on("GET", "/broken", Reply(200, body[:-1], headers={"Content-Type": "application/json"}))
    rules = write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            envelope: json
            methods:
              hello: {{method: GET, path: /hello}}
              broken: {{method: GET, path: /broken}}
        """,
        "apps.yaml": """
            apps:
              order-service: {secret: s3cret-order}
        """,
    })
    with Gateway(rules, confdir) as gw:
        proxies = gw.proxies("order-service", "s3cret-order")
        r = requests.get("http://api.demo.test/hello", proxies=proxies, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        envelope = r.json()
        assert envelope["code"] == 0 and envelope["data"] == {"items": items}
        assert envelope["request_id"] == r.headers["X-Request-ID"]
        broken = requests.get("http://api.demo.test/broken", proxies=proxies, timeout=10)
        assert broken.json()["code"] == -1004 and broken.json()["data"] is None
