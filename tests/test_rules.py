"""Rule files (SPEC 3) and `python -m addons check`: every problem as file:line, nothing half-loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from addons.rules.loader import load_directory, load_sources
from addons.rules.router import Router
from addons.units import parse_duration, parse_rate
from tests.conftest import ROOT
from tests.harness import write_rules


def check(directory: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "addons", "check", str(directory)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env=env)


def test_shipped_rules_pass_check() -> None:
    out = check(ROOT / "rules")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok:" in out.stdout
    # Unset secrets are warnings: the gateway starts and names what is missing.
    assert "WECHAT_SECRET" in out.stdout


def test_check_reports_every_problem_as_file_line_and_exits_1(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, {
        "a.yaml": """
            service: a
            upstream:
              url: ftp://nowhere
              timeout: 5 parsecs
            retry: {attempts: 0}
            quota:
              - {limit: 10/fortnight}
            typo_key: 1
        """,
        "b.yaml": """
            service: b
            upstream: {url: "http://b.test"}
            credentials: {type: static, value: x}
        """,
        "c.yaml": "service: [unclosed\n",
        "apps.yaml": """
            apps:
              ghost: {allow: ["*"]}
        """,
    })
    out = check(rules)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    expected = [
        "a.yaml:4: upstream.url:",
        "a.yaml:5: upstream.timeout: not a duration",
        "a.yaml:6: retry.attempts:",
        "a.yaml:8: quota.0.limit: not a rate",
        "a.yaml:9: typo_key: unknown key",
        "b.yaml:4: credentials: static credentials need exactly one of 'header' or 'query'",
        "c.yaml:2: invalid YAML",
        "apps.yaml:3: apps.ghost: an app needs a 'secret' or 'sources'",
    ]
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, out.stdout)


def test_duplicates_across_files_are_errors(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, {
        "one.yaml": "service: pay\nupstream: {url: 'http://pay.test'}\n",
        "two.yaml": "service: pay\nupstream: {url: 'http://pay2.test'}\n",
        "three.yaml": "service: other\nhosts: [pay.test]\nupstream: {url: 'http://x.test'}\n",
        "apps1.yaml": "apps:\n  a: {secret: x}\n",
        "apps2.yaml": "apps:\n  a: {secret: y}\ngateway: {}\n",
        "apps3.yaml": "gateway: {require_app: false}\n",
    })
    _, problems = load_directory(rules)
    text = "\n".join(str(p) for p in problems)
    assert "two.yaml:1: service 'pay' is already defined in" in text
    assert "three.yaml:2: host 'pay.test' already belongs to service 'pay'" in text
    assert "apps2.yaml:2: app 'a' is already defined in" in text
    assert "'gateway:' is already set in" in text


def test_env_substitution_defaults_and_missing_variables_disable_only_that_service(tmp_path: Path) -> None:
    rules, problems = load_sources([
        ("wx.yaml", "service: wx\nupstream: {url: '${WX_URL:-http://wx.test}'}\n"
                    "credentials: {type: static, header: K, value: '${WX_KEY}'}\n"),
        ("ok.yaml", "service: ok\nupstream: {url: '${OK_URL}'}\n"),
    ], tmp_path, env={"OK_URL": "http://ok.test:8080/v1"})
    assert problems == []
    assert "wx" in rules.disabled and "WX_KEY" in rules.disabled["wx"].reason
    assert rules.disabled["wx"].hosts == ("wx.test",)
    assert rules.services["ok"].upstream.url == "http://ok.test:8080/v1"
    assert rules.services["ok"].hosts == ["ok.test"]


def test_file_references_durations_rates_and_yaml_words(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("from-a-file")
    rules, problems = load_sources([(
        "s.yaml",
        "service: off\nupstream: {url: 'http://s.test', timeout: 250ms}\n"
        "credentials: {type: static, header: K, value: 'file:key.txt'}\n"
        "retry: {on: [connect, 503, -1003], deadline: 2m}\n"
        "quota: [{limit: 100/min, per: service, tz: Asia/Shanghai}]\n",
    )], tmp_path, env={})
    assert problems == []
    spec = rules.services["off"]  # `off` stays a name, `on` stays a key
    assert spec.credentials.value.get_secret_value() == "from-a-file"  # type: ignore[union-attr]
    assert "from-a-file" not in repr(spec)
    assert spec.upstream.timeout == 0.25 and spec.retry is not None and spec.retry.deadline == 120
    assert spec.retry.on == ["connect", 503, -1003]
    assert parse_duration("1h") == 3600 and parse_rate("50000/day").window == 86400
    with pytest.raises(ValueError):
        parse_rate("5/week")


def test_router_literal_beats_template_and_http_method_matters(tmp_path: Path) -> None:
    rules, problems = load_sources([(
        "s.yaml",
        "service: s\nhosts: [s.test, '*.s.test']\nupstream: {url: 'http://s.test/v1'}\nmethods:\n"
        "  get_item: {method: GET, path: '/items/{id}'}\n"
        "  put_item: {method: PUT, path: '/items/{id}'}\n"
        "  special: {path: '/items/special'}\n",
    )], tmp_path, env={})
    assert problems == []
    router = Router(rules)
    assert router.match("s.test", "/v1/items/special", "GET").method == "special"  # type: ignore[union-attr]
    assert router.match("s.test", "/items/9?x=1", "PUT").method == "put_item"  # type: ignore[union-attr]
    assert router.match("eu.s.test", "/items/9", "GET").method == "get_item"  # type: ignore[union-attr]
    assert router.match("s.test", "/items/9", "DELETE").method == "_"  # type: ignore[union-attr]
    assert router.match("other.test", "/", "GET") is None


def test_check_works_from_any_directory(tmp_path: Path) -> None:
    """The venv's python runs `-m addons check` from anywhere; without an argument it checks the
    project's own rules/ (or $GATEWAY_RULES)."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_RULES"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-m", "addons", "check"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{ROOT / 'rules'}: ok:" in done.stdout
    done = subprocess.run([sys.executable, "-m", "addons", "check", "no-such-dir"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 1 and "no such rules directory" in done.stderr
