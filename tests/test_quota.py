"""Which quotas apply to a call, and the RateLimit / Retry-After headers (SPEC 8)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from addons.quota.policy import admission_headers, policy_name, quota_checks, ratelimit_headers
from addons.quota.schema import AppQuotaSpec, QuotaSpec
from addons.rules.loader import load_sources
from addons.state.base import Admission, QuotaCheck

NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC).timestamp()


def q(limit: str, per: str = "app", tz: str | None = None) -> QuotaSpec:
    return QuotaSpec.model_validate({"limit": limit, "per": per, "tz": tz})


def test_keys_and_scopes_of_every_kind() -> None:
    checks = quota_checks(
        "order-service", [AppQuotaSpec.model_validate({"limit": "600/min"})],
        "wechat", [q("2000/day", "service"), q("100/min", "app")],
        "send_msg", [q("10/s", "service"), q("50/min", "app")],
        now=NOW,
    )
    assert checks == [
        QuotaCheck("app:order-service", 600, 60, 0, "app"),
        QuotaCheck("svc:wechat", 2000, 86400, 0, "service"),
        QuotaCheck("svc:wechat|app:order-service", 100, 60, 0, "service"),
        QuotaCheck("m:wechat.send_msg", 10, 1, 0, "method"),
        QuotaCheck("m:wechat.send_msg|app:order-service", 50, 60, 0, "method"),
    ]


def test_unidentified_caller_counts_as_app_underscore() -> None:
    checks = quota_checks(None, None, "amap", [q("100/min", "app"), q("1000/min", "service")], "_", None,
                          now=NOW)
    assert [c.key for c in checks] == ["svc:amap|app:_", "svc:amap"]


def test_no_quotas_no_checks() -> None:
    assert quota_checks("a", None, "s", [], "m", None, now=NOW) == []
    assert quota_checks("a", [], "s", None, "m", [], now=NOW) == []


def test_same_counter_twice_keeps_the_stricter_limit() -> None:
    checks = quota_checks("a", None, "s", [q("100/min"), q("50/min"), q("1000/hour")], "m", None, now=NOW)
    assert [(c.key, c.limit, c.window) for c in checks] == [
        ("svc:s|app:a", 50, 60),
        ("svc:s|app:a", 1000, 3600),
    ]


def test_tz_gives_the_offset_of_the_zone() -> None:
    (shanghai,) = quota_checks("a", None, "s", [q("5/day", tz="Asia/Shanghai")], "m", None, now=NOW)
    assert shanghai.offset == 8 * 3600
    edge = datetime(2024, 5, 1, 16, 0, tzinfo=UTC).timestamp()
    assert shanghai.window_start(edge - 1) == edge - 86400
    assert shanghai.window_start(edge) == edge
    (utc,) = quota_checks("a", None, "s", [q("5/day")], "m", None, now=NOW)
    assert utc.offset == 0 and utc.window_start(NOW) == datetime(2024, 5, 1, tzinfo=UTC).timestamp()


def test_tz_offset_follows_daylight_saving() -> None:
    specs = [q("5/day", tz="Europe/Berlin")]
    winter = datetime(2024, 1, 15, 12, tzinfo=UTC).timestamp()
    summer = datetime(2024, 7, 15, 12, tzinfo=UTC).timestamp()
    assert quota_checks("a", None, "s", specs, "m", None, now=winter)[0].offset == 3600
    assert quota_checks("a", None, "s", specs, "m", None, now=summer)[0].offset == 7200
    assert quota_checks("a", None, "s", specs, "m", None, now=winter)[0].offset == 3600


def test_cached_checks_are_not_shared_mutable_state() -> None:
    specs = [q("5/min")]
    first = quota_checks("a", None, "s", specs, "m", None, now=NOW)
    first.clear()
    assert len(quota_checks("a", None, "s", specs, "m", None, now=NOW)) == 1
    # Another app with the same rule lists gets its own keys.
    assert quota_checks("b", None, "s", specs, "m", None, now=NOW)[0].key == "svc:s|app:b"


def test_policy_names_are_stable_and_safe() -> None:
    assert policy_name(QuotaCheck("svc:wechat|app:order-service", 100, 60)) == "wechat/app/minute"
    assert policy_name(QuotaCheck("svc:wechat", 2000, 86400)) == "wechat/day"
    assert policy_name(QuotaCheck("app:order-service", 600, 60, scope="app")) == "app/minute"
    assert policy_name(QuotaCheck("m:wechat.send_msg", 10, 1, scope="method")) == "wechat.send_msg/second"
    assert policy_name(QuotaCheck("m:amap.geo|app:x", 5, 3600, scope="method")) == "amap.geo/app/hour"
    odd = policy_name(QuotaCheck('svc:we"ird\\name;q=1,\r\n', 1, 60))
    assert re.fullmatch(r"[A-Za-z0-9._/-]+", odd)


def test_ratelimit_headers_for_a_refusal() -> None:
    check = QuotaCheck("svc:wechat|app:order-service", 100, 60)
    headers = ratelimit_headers(check, 0, NOW)  # 30 s into the minute
    assert headers == {
        "RateLimit-Policy": '"wechat/app/minute";q=100;w=60',
        "RateLimit": '"wechat/app/minute";r=0;t=30',
        "Retry-After": "30",
    }


def test_ratelimit_headers_for_an_admitted_call() -> None:
    check = QuotaCheck("svc:wechat", 2000, 86400)
    headers = ratelimit_headers(check, 1500, NOW)
    assert headers == {
        "RateLimit-Policy": '"wechat/day";q=2000;w=86400',
        "RateLimit": '"wechat/day";r=1500;t=43170',
    }
    assert "Retry-After" not in ratelimit_headers(check, 0, NOW, refused=False)
    assert ratelimit_headers(check, -3, NOW)["RateLimit"].startswith('"wechat/day";r=0;')


def test_retry_after_is_seconds_to_the_window_end_and_at_least_one() -> None:
    check = QuotaCheck("svc:s", 2, 1)
    assert ratelimit_headers(check, 0, 1000.2, refused=True)["Retry-After"] == "1"
    assert ratelimit_headers(check, 0, 1000.999, refused=True)["Retry-After"] == "1"
    day = QuotaCheck("svc:s", 2, 86400, offset=8 * 3600)
    before_edge = datetime(2024, 5, 1, 15, 0, tzinfo=UTC).timestamp()
    assert ratelimit_headers(day, 0, before_edge, refused=True)["Retry-After"] == "3600"


def test_admission_headers() -> None:
    a = QuotaCheck("app:x", 600, 60, scope="app")
    b = QuotaCheck("svc:s", 10, 60)
    refused = admission_headers(Admission(False, b, (599, 0)), [a, b], NOW)
    assert refused["RateLimit-Policy"] == '"s/minute";q=10;w=60' and refused["Retry-After"] == "30"
    admitted = admission_headers(Admission(True, None, (500, 3)), [a, b], NOW)
    assert admitted == {"RateLimit-Policy": '"s/minute";q=10;w=60', "RateLimit": '"s/minute";r=3;t=30'}
    assert admission_headers(Admission(True), [], NOW) == {}


def test_an_app_quota_is_the_same_spec_but_refuses_per_service_where_it_is_written(tmp_path: Path) -> None:
    rules, problems = load_sources([(
        "apps.yaml",
        "apps:\n  a:\n    secret: s\n    quota:\n      - limit: 10/min\n        per: service\n"
        "  b:\n    secret: t\n    quota: [{limit: 5/s, tz: Asia/Shanghai}]\n",
    )], tmp_path, env={})
    assert [str(p) for p in problems] == ["apps.yaml:6: apps.a.quota.0.per: Input should be 'app'"]
    assert "a" not in rules.apps
    (quota,) = rules.apps["b"].quota
    assert isinstance(quota, QuotaSpec) and (quota.per, quota.tz, quota.limit.limit) == ("app", "Asia/Shanghai", 5)
