"""Small text helpers shared by the envelope adapters and the redactor. Free of mitmproxy."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clip(text: str, limit: int = 500) -> str:
    """One line, at most `limit` characters: control characters become spaces, the end is cut."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def declared_charset(content_type: str) -> str | None:
    """The `charset=` of a Content-Type value, lower-cased and unquoted; None when it names none."""
    _, found, rest = content_type.lower().partition("charset=")
    if not found:
        return None
    return rest.split(";", 1)[0].strip().strip("\"'") or None
