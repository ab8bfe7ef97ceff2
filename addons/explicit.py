"""The explicit form `http://gateway.local/<service>/<method>` (SPEC 4, 16): its parameters come from
the query and, for a JSON object body, from the body's top-level fields; they fill the method's path
template, and the method's own HTTP method decides where the rest goes upstream (the query for
methods without a body, the JSON body otherwise). Free of mitmproxy."""

from __future__ import annotations

import json
from typing import Any

# The host of the explicit form: a call to it names its service and method in the path.
EXPLICIT_HOST = "gateway.local"
# Methods whose parameters travel in the query; a body sent with them is not forwarded.
QUERY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
MAX_PARAMS = 1000  # a JSON body with more top-level fields is not taken apart into a query


def json_object(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The body as a JSON object when it is one (declared JSON, or no type and JSON-shaped), else None."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body or (kind and kind != "application/json" and not kind.endswith("+json")):
        return None
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def query_value(value: Any) -> str:
    """How a JSON value reads as a query or path parameter."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def template_params(query: dict[str, str], body: dict[str, Any] | None) -> dict[str, str]:
    """What may fill `{name}`: the query first, then the body's scalar fields."""
    params = {k: query_value(v) for k, v in (body or {}).items()
              if isinstance(v, str | int | float) and not isinstance(v, bool)}
    params.update(query)
    return params


def reshape(http_method: str, query: list[tuple[str, str]], body: bytes, fields: dict[str, Any] | None,
            consumed: frozenset[str]) -> tuple[list[tuple[str, str]], bytes, bool]:
    """(query, body, body_replaced) as the call goes upstream: parameters that filled the path leave
    the query and the JSON body; for a query method a JSON object body becomes query parameters."""
    query = [(k, v) for k, v in query if k not in consumed]
    if fields is None:
        if http_method in QUERY_METHODS:
            return query, b"", bool(body)
        return query, body, False
    rest = {k: v for k, v in fields.items() if k not in consumed}
    if http_method in QUERY_METHODS:
        if len(rest) > MAX_PARAMS:
            raise ValueError(f"a JSON body with more than {MAX_PARAMS} fields cannot become a query")
        for name, value in rest.items():
            if isinstance(value, list):
                query.extend((name, query_value(item)) for item in value)
            else:
                query.append((name, query_value(value)))
        return query, b"", True
    if len(rest) == len(fields):
        return query, body, False
    return query, json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode(), True
