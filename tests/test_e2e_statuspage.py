"""The status page at the admin root (SPEC 19) of a real gateway after real traffic: over plain HTTP,
and as a person sees it in headless Chromium (Debian's `chromium`): services with their targets'
health, quota use, a disabled service and why, the recent failed calls with their codes; no
secret anywhere on it, no script, and a meta refresh."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from tests.fakes import FakeProvider, Reply, refused_url
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "order-service", "s3cret-order-page-31f0"
INJECTED = "injected-provider-key-page-8e2a"
PHONE = "13812345678"


class Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.tags: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def visible(page: str) -> tuple[str, set[str]]:
    parser = Text()
    parser.feed(page)
    return re.sub(r"\s+", " ", " ".join(parser.parts)), parser.tags


def rules(tmp_path: Path, fake: FakeProvider) -> Path:
    return write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            quota: [{{limit: 100/hour, per: service}}]
            unmatched: deny
            methods:
              hello: {{method: GET, path: /hello}}
        """,
        "broken.yaml": f"""
            service: broken
            hosts: [api.broken.test]
            upstream: {{url: "{refused_url()}", timeout: 1s}}
            methods:
              ping: {{method: GET, path: /ping}}
        """,
        "off.yaml": """
            service: sleepy
            hosts: [api.sleepy.test]
            upstream: {url: "http://127.0.0.1:9"}
            credentials: {type: static, header: X-Api-Key, value: "${SLEEPY_KEY_NOT_SET}"}
            methods:
              nap: {method: GET, path: /nap}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: {APP_SECRET}}}
            gateway: {{require_app: true, unknown_hosts: deny}}
        """,
    })


def same_quota_window_for_the_whole_module() -> None:
    """Quota windows are aligned to the clock: a count read after the hour turns is 0. The calls
    and the page reads take well under two minutes, so start them in a fresh hour if less is left."""
    left = 3600 - time.time() % 3600
    if left < 120:
        time.sleep(left + 0.5)


def traffic(gw: Gateway, fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"hello": "world"}))
    same_quota_window_for_the_whole_module()
    session = requests.Session()
    proxies = gw.proxies(APP, APP_SECRET)
    for _ in range(3):
        assert session.get("http://api.demo.test/hello", proxies=proxies, timeout=10).json()["code"] == 0
    for _ in range(3):  # three refused connects mark the target down
        assert session.get("http://api.broken.test/ping", proxies=proxies, timeout=10).json()["code"] == -1003
    assert session.get("http://api.sleepy.test/nap", proxies=proxies, timeout=10).json()["code"] == -3001
    # The message names the path, with a phone number in it: redacted on the page.
    assert session.get(f"http://api.demo.test/users/{PHONE}", proxies=proxies, timeout=10).json()["code"] == -2005


def check_page(text: str, tags: set[str]) -> None:
    assert "script" not in tags
    # Services with their targets' health.
    assert re.search(r"demo api\.demo\.test primary http://127\.0\.0\.1:\d+ ?: up", text), text
    assert re.search(r"broken api\.broken\.test primary http://127\.0\.0\.1:\d+ ?: down", text), text
    assert "service: 3/100 per hour" in text  # the demo quota's current use
    # The disabled service and why.
    assert "sleepy" in text and "SLEEPY_KEY_NOT_SET" in text
    # The recent failed calls, with code, service.method and app.
    assert re.search(r"-1003 503 broken\.ping order-service broken\.ping: upstream unreachable", text), text
    assert "-3001 503 sleepy._ order-service sleepy is disabled" in text
    assert "-2005" in text and "1381234****" in text and PHONE not in text
    assert "no failed calls" not in text
    # Absent features say so.
    assert "- (not in use)" in text
    for secret in (INJECTED, APP_SECRET):
        assert secret not in text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[Gateway]:
    """One gateway after the traffic above, shared by the page's readers (they only read)."""
    fake = FakeProvider()
    gw = Gateway(rules(tmp_path_factory.mktemp("page"), fake), confdir, env={"DEMO_KEY": INJECTED})
    try:
        gw.start()
        traffic(gw, fake)
        yield gw
    finally:
        gw.stop()
        fake.close()


def test_status_page_over_http(served: Gateway) -> None:
    gw = served
    answer = requests.get(f"{gw.admin}/", timeout=5)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="10">' in answer.text
    assert INJECTED not in answer.text and APP_SECRET not in answer.text
    check_page(*visible(answer.text))


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Debian's chromium is not installed (run_tests.sh installs it with apt when run as root)")


def test_status_page_in_headless_chromium(served: Gateway) -> None:
    browser = chromium()
    gw = served
    with tempfile.TemporaryDirectory() as profile:
        # --dump-dom serialises the page after Chromium loaded and laid it out (it needs JavaScript
        # on to do so, so the page's independence from scripts is checked by it having none: no
        # <script>, no on* handlers). Its own profile; no sandbox, as tests may run as root.
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--no-first-run", "--dump-dom", f"{gw.admin}/"],
            capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>Egress gateway status</title>" in dom
    assert not re.search(r"<[^>]+\son[a-z]+=", dom)  # no event handlers either
    check_page(*visible(dom))
