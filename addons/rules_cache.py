"""The last good remote rules feed, saved on disk, so a gateway restarted during a feed outage serves
what the fleet served instead of its local rules only. One file: a header line naming the feed (by a
hash of its URL, which may hold credentials) and the feed's body as it came."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_MAGIC = "# gateway remote rules cache"


def default_path(rules_dir: str) -> str:
    """Beside the rules directory (not in it: it would be read as a rule file): `rules.remote-cache`."""
    directory = Path(rules_dir).resolve()
    return str(directory.with_name(directory.name + ".remote-cache"))


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def save(path: str, url: str, text: str) -> None:
    """Atomically (a crash leaves the old copy or the new one), readable by the gateway only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{_MAGIC} url:{_url_key(url)}\n{text}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str, url: str, max_bytes: int) -> str | None:
    """The saved body of this feed, or None (no copy, another feed's, too large or unreadable)."""
    target = Path(path)
    try:
        if target.stat().st_size > max_bytes + 200:
            return None
        content = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    header, _, body = content.partition("\n")
    if header != f"{_MAGIC} url:{_url_key(url)}":
        return None
    return body
