"""The explicit form's parameters (addons/explicit.py) and the saved remote rules (addons/rules_cache.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addons import rules_cache
from addons.explicit import json_object, reshape, template_params


def test_json_body_fields_fill_templates_and_the_query_wins() -> None:
    fields = json_object(b'{"id": 6, "name": "lamp", "flag": true, "nested": {"a": 1}}', "application/json")
    assert fields is not None
    assert template_params({"name": "from-query"}, fields) == {"id": "6", "name": "from-query"}
    assert json_object(b"id=6", "application/x-www-form-urlencoded") is None
    assert json_object(b"[1, 2]", "application/json") is None
    assert json_object(b"{not json", "") is None


def test_a_query_method_takes_the_body_as_query_and_sends_no_body() -> None:
    body = b'{"id": "6", "page": 2, "tags": ["a", "b"], "on": false, "f": {"x": 1}}'
    query, sent, replaced = reshape("GET", [("q", "1"), ("id", "6")], body, json_object(body, ""), frozenset({"id"}))
    assert (sent, replaced) == (b"", True)
    assert query == [("q", "1"), ("page", "2"), ("tags", "a"), ("tags", "b"), ("on", "false"), ("f", '{"x":1}')]
    # A body that is not JSON is not forwarded with a GET either.
    assert reshape("GET", [], b"raw", None, frozenset()) == ([], b"", True)


def test_a_body_method_keeps_the_body_less_what_filled_the_path() -> None:
    body = b'{"id": 6, "name": "lamp"}'
    query, sent, replaced = reshape("PUT", [], body, json_object(body, ""), frozenset({"id"}))
    assert (query, json.loads(sent), replaced) == ([], {"name": "lamp"}, True)
    assert reshape("POST", [], body, json_object(body, ""), frozenset()) == ([], body, False)


def test_too_many_fields_for_a_query_is_refused() -> None:
    fields = {f"k{i}": i for i in range(1001)}
    with pytest.raises(ValueError, match="1000"):
        reshape("GET", [], json.dumps(fields).encode(), fields, frozenset())


def test_rules_cache_round_trip_only_for_the_same_feed(tmp_path: Path) -> None:
    path = rules_cache.default_path(str(tmp_path / "rules"))
    assert path == str(tmp_path / "rules.remote-cache")
    rules_cache.save(path, "https://user:pw@feed.internal/rules", "service: a\n---\nservice: b\n")
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    assert "pw" not in Path(path).read_text().splitlines()[0]
    assert rules_cache.load(path, "https://user:pw@feed.internal/rules", 1 << 20) == "service: a\n---\nservice: b\n"
    assert rules_cache.load(path, "https://other.internal/rules", 1 << 20) is None
    assert rules_cache.load(str(tmp_path / "missing"), "https://x", 1 << 20) is None
