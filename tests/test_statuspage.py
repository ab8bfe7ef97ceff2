"""The status page's pure parts (SPEC 19): the renderer escapes everything it shows, marks health,
shows "-" for absent features; the failure ring and the quota readings stay bounded."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

from addons.call import Call
from addons.recent import QuotaUse, RecentFailures
from addons.redact import Redactor
from addons.state.base import Admission, QuotaCheck
from addons.statuspage import PageInput, render

EVIL = "<script>alert(1)</script>"


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.meta: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "meta":
            self.meta.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Elements:
    p = Elements()
    p.feed(page)
    return p


def status_document(name: str = "demo") -> dict:
    return {
        "ready": True, "degraded": [], "pid": 42, "started_at": "2026-01-01T00:00:00.000Z",
        "state": {"backend": "memory", "available": True},
        "services": {
            name: {"enabled": True, "hosts": ["api.demo.test"], "methods": ["hello"], "file": "demo.yaml"},
            "off": {"enabled": False, "disabled_reason": f"missing variable OFF_KEY {EVIL}", "file": "off.yaml",
                    "hosts": [], "methods": []},
        },
        "apps": {"enabled": ["a"], "disabled": {"late": "missing variable LATE_SECRET"}},
        "health": {name: {"targets": [
            {"target": "primary", "url": "http://127.0.0.1:1", "up": True, "state": "up"},
            {"target": "backup", "url": "http://127.0.0.1:2", "up": False, "state": "down",
             "last_error": f"connect failed {EVIL}"}]}},
        "rules": {"version": "abc123", "files": ["demo.yaml"], "directory": "rules", "last_reload_at": "t",
                  "last_reload_ok": False, "last_reload_error": [f"demo.yaml:3: bad {EVIL}"]},
    }


def failed_call(rule: str, message: str, code: int = -1003) -> Call:
    service, method = rule.split(".")
    call = Call("req-00000001", "GET", "http://x/")
    call.service, call.method, call.app = service, method, "app"
    call.code, call.status, call.message = code, 503, message
    return call


def test_everything_shown_is_escaped() -> None:
    failures = RecentFailures()
    failures.add(failed_call("demo.hello", f"upstream said {EVIL}"), Redactor())
    page = render(PageInput(status=status_document(name=EVIL), failures=failures.newest_first(),
                            features={"cache": {"note": EVIL}, "queues": None}))
    elements = parsed(page)
    assert "script" not in elements.tags  # no markup from any value became an element
    text = "".join(elements.text)
    assert text.count(EVIL) >= 6  # it is shown, as text: service, disabled reason, error, reload, failure, cache
    refresh = [m for m in elements.meta if m.get("http-equiv") == "refresh"]
    assert refresh and int(refresh[0]["content"] or 0) > 0


def test_health_disabled_reload_and_absent_features_are_shown() -> None:
    page = render(PageInput(status=status_document(), features={"cache": None, "queues": None}))
    text = re.sub(r"\s+", " ", "".join(parsed(page).text))
    assert "primary http://127.0.0.1:1: up" in text and "backup http://127.0.0.1:2: down" in text
    assert "missing variable OFF_KEY" in text and "app late" in text and "missing variable LATE_SECRET" in text
    assert "failed" in text and "demo.yaml:3: bad" in text
    assert text.count("- (not in use)") == 2  # the cache and the queues, absent here
    assert "no failed calls since the start" in text


def test_failure_ring_is_bounded_newest_first_and_redacted() -> None:
    ring = RecentFailures(size=3)
    for i in range(10):
        ring.add(failed_call("demo.hello", f"call {i} for 13812345678"), Redactor())
    shown = ring.newest_first()
    assert [f.message for f in shown] == [f"call {i} for 1381234****" for i in (9, 8, 7)]
    assert ring.total == 10


def test_quota_use_shows_the_current_window_and_resets_after_it() -> None:
    use = QuotaUse(size=10)
    now = time.time()
    check = QuotaCheck("svc:demo|app:a", 100, 60, scope="service")
    use.note([check], Admission(True, remaining=(97,)), now)
    (reading,) = use.current(now)
    assert (reading.used, reading.limit) == (3, 100)
    page = render(PageInput(status=status_document(), quotas=use.current(now), now=now))
    assert "service: 3/100 per min" in "".join(parsed(page).text)
    (later,) = use.current(now + 120)
    assert later.used == 0
    for i in range(30):  # bounded however many counters appear
        use.note([QuotaCheck(f"app:x{i}", 1, 1)], Admission(True, remaining=(0,)), now)
    assert len(use.current(now)) <= 12


class AsyncCache:
    async def status(self) -> dict:
        return {"entries": 3, "memory": {"used": 1024}, "token": "must-not-show"}


class BrokenQueues:
    def stats(self) -> dict:
        raise RuntimeError("boom")


async def test_feature_figures_are_read_defensively_and_redacted() -> None:
    from addons.chain.admin import Admin
    from addons.chain.context import GatewayContext
    from addons.chain.statuspage import features

    gw = GatewayContext()
    shown = await features(Admin(gw))
    assert shown == {"cache": None, "queues": None, "tracing": None}  # none of them runs here
    gw.cache = AsyncCache()  # type: ignore[attr-defined]
    gw.queues = BrokenQueues()  # type: ignore[attr-defined]
    gw.status_providers = {"shaping": lambda: {"waiting": 2}}  # type: ignore[attr-defined]
    shown = await features(Admin(gw))
    assert shown["cache"] == {"entries": 3, "memory": {"used": 1024}, "token": "***"}
    assert shown["queues"] == {"error": "unavailable (RuntimeError)"}
    assert shown["shaping"] == {"waiting": 2}
    text = "".join(parsed(render(PageInput(status=status_document(), features=shown))).text)
    assert "memory.used" in text and "must-not-show" not in text
