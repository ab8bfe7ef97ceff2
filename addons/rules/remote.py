"""The remote rules feed (`gateway_rules_url`): one poll, and what its answer means (no mitmproxy).

The glue (`addons/chain/watch.py`) owns the timing and the reload; this module owns the feed's
state (`RemoteFeed`), the conditional request (`fetch`), the judgement of an answer (`RemoteFeed.offer`:
nothing to do, a failure to keep the documents in force through, or documents to try) and what
/status shows (`RemoteFeed.status`). The behaviour is described in `addons/chain/watch.py`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from addons.redact import Redactor, is_secret_name
from addons.timestamps import rfc3339

log = logging.getLogger("gateway")

MAX_FEED_BYTES = 16 * 1024 * 1024
_SEPARATOR = re.compile(r"^---(?:[ \t].*)?$")
ACCEPT = "application/yaml, text/yaml, text/plain;q=0.9, */*;q=0.5"

Source = tuple[str, str]  # (name shown in problems, document text)


def split_documents(text: str) -> list[str]:
    """A feed body to its YAML documents, at `---` lines (the rest of such a line, e.g. `--- # x`,
    belongs to the separator). Documents with nothing but blank lines and comments are dropped. A
    `...` end marker line is dropped too."""
    documents: list[list[str]] = [[]]
    for line in text.splitlines():
        if _SEPARATOR.match(line):
            documents.append([])
        elif line.rstrip() == "...":
            continue
        else:
            documents[-1].append(line)
    out = []
    for lines in documents:
        meaningful = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "%"))]
        if meaningful:
            out.append("\n".join(ln for ln in lines if not ln.startswith("%")) + "\n")
    return out


def named_documents(shown: str, text: str) -> list[Source]:
    """The documents of a feed body, named `<url>#N` (N counts the non-empty documents from 1)."""
    return [(f"{shown}#{i}", doc) for i, doc in enumerate(split_documents(text), 1)]


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def url_redactor(url: str) -> Redactor:
    """A redactor that also knows the URL's own secrets as values: an aiohttp error text may quote the
    URL, its host part or a credential on its own."""
    redactor = Redactor()
    parts = urlsplit(url)
    redactor.add_secret(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if is_secret_name(name):
            redactor.add_secret(value)
    return redactor


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class FeedAnswer:
    """One poll's outcome: an error, a 304, or a 200 body with its validators."""

    status: int | None = None
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Offer:
    """Documents the feed serves that are not in force: the glue tries them in one reload."""

    documents: list[Source]
    digest: str
    text: str  # the body, saved to the cache once the documents are in force


@dataclass
class RemoteFeed:
    """The state of `gateway_rules_url` for polling and for /status."""

    url: str = ""
    shown: str = ""  # the URL redacted: the only form ever written anywhere
    etag: str | None = None
    last_modified: str | None = None
    force: bool = False  # next poll without validators (SIGHUP, gateway.reload)
    settled: bool = True  # the first fetch completed (or no URL): /readyz waits for it
    documents: list[str] = field(default_factory=list)  # names of the documents in force
    digest: str | None = None  # of the body in force
    rejected_digest: str | None = None
    rejected: list[Source] | None = None  # documents refused by validation, retried after a local change
    rejected_problems: list[str] = field(default_factory=list)
    last_status: int | None = None
    last_error: str | None = None
    last_fetch_at: float | None = None
    last_ok_at: float | None = None
    last_change_at: float | None = None
    fetches: int = 0
    not_modified: int = 0
    failures: int = 0
    redactor: Redactor = field(default_factory=Redactor)
    in_force: str = "none"  # where the remote documents in force came from: feed | cache | none
    cache_path: str = ""
    cache_saved_at: float | None = None
    cache_error: str | None = None

    @classmethod
    def for_url(cls, url: str) -> RemoteFeed:
        if not url:
            return cls()
        return cls(url=url, shown=Redactor().url(url), settled=False, redactor=url_redactor(url))

    def scrub(self, text: str) -> str:
        if self.url:
            text = text.replace(self.url, self.shown)
        return self.redactor.text(text)

    def settled_for_readiness(self) -> bool:
        """/readyz: no feed, remote documents in force (fetched or saved), or the feed answered."""
        return not self.url or self.in_force != "none" or self.last_ok_at is not None

    def request_headers(self) -> dict[str, str]:
        """The next poll's headers; validators unless a forced poll was asked for (which this consumes)."""
        headers = {"Accept": ACCEPT}
        if not self.force:
            if self.etag:
                headers["If-None-Match"] = self.etag
            if self.last_modified:
                headers["If-Modified-Since"] = self.last_modified
        self.force = False
        return headers

    # -- judging an answer ------------------------------------------------------------------------

    def offer(self, answer: FeedAnswer, documents_in_force: int, forced: bool) -> Offer | None:
        """What an answer asks for: documents to try, or None (recorded here: a 304, a failure, the
        body in force, a body refused before)."""
        if answer.error is not None:
            self.failed(answer.error)
            return None
        if answer.status == 304:
            self.not_modified += 1
            self.ok()
            return None
        if len(answer.body) > MAX_FEED_BYTES:
            self.failed(f"body larger than {MAX_FEED_BYTES // (1024 * 1024)} MiB")
            return None
        try:
            text = answer.body.decode("utf-8-sig")
        except UnicodeDecodeError:
            self.failed("body is not UTF-8 text")
            return None
        documents = named_documents(self.shown, text)
        if not documents and documents_in_force:
            # More likely a feed emptied by mistake than an intent to drop every remote rule at once.
            self.failed(f"the feed is empty; keeping the {documents_in_force} "
                        "document(s) in force (unset gateway_rules_url to drop them)")
            return None
        self.etag, self.last_modified = answer.etag, answer.last_modified
        self.ok()
        digest = digest_of(answer.body)
        if digest == self.digest:
            self.in_force = "feed"  # the saved copy in force is what the feed serves now
            return None  # the server ignores validators, or answered 200 with what is in force
        if digest == self.rejected_digest and not forced:
            return None  # already refused; logged then, shown in /status since
        return Offer(documents, digest, text)

    def accepted(self, documents: list[Source], digest: str | None) -> None:
        self.documents = [name for name, _ in documents]
        self.digest = digest
        self.rejected, self.rejected_digest, self.rejected_problems = None, None, []
        self.last_change_at = time.time()

    def refused(self, documents: list[Source], digest: str | None, problems: list[str]) -> None:
        self.rejected, self.rejected_digest, self.rejected_problems = documents, digest, problems

    def ok(self) -> None:
        if self.last_error is not None:
            log.warning("gateway: remote rules from %s reachable again", self.shown)
        self.last_error = None
        self.last_ok_at = time.time()

    def failed(self, error: str) -> None:
        error = self.scrub(error)
        self.failures += 1
        if error != self.last_error:
            # WARNING, not ERROR: an unreachable feed is not a broken gateway (and an ERROR during
            # mitmproxy's start would make it exit), the rules in force keep serving.
            log.warning("gateway: remote rules from %s not fetched: %s; keeping the %d document(s) in force",
                        self.shown, error, len(self.documents))
        self.last_error = error

    def status(self, poll_s: int | None) -> dict[str, Any] | None:
        if not self.url:
            return None
        return {
            "url": self.shown,
            "poll_s": poll_s,
            "ok": self.last_error is None and self.rejected is None,
            "in_force": self.in_force,
            "cache": {"path": self.cache_path or None, "saved_at": rfc3339(self.cache_saved_at),
                      "error": self.cache_error},
            "documents": list(self.documents),
            "etag": self.etag,
            "last_modified": self.last_modified,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "rejected": list(self.rejected_problems),
            "last_fetch_at": rfc3339(self.last_fetch_at),
            "last_ok_at": rfc3339(self.last_ok_at),
            "last_change_at": rfc3339(self.last_change_at),
            "fetches": self.fetches,
            "not_modified": self.not_modified,
            "failures": self.failures,
        }


async def fetch(feed: RemoteFeed, poll_s: int) -> FeedAnswer:
    """One conditional GET of the feed, bounded in time and size; never raises for a feed's fault."""
    headers = feed.request_headers()
    timeout = aiohttp.ClientTimeout(total=min(30.0, max(2.0, poll_s)), sock_connect=min(5.0, poll_s))
    feed.last_fetch_at = time.time()
    feed.fetches += 1
    try:
        # A session per poll: one request every few seconds, and nothing to close at shutdown.
        async with aiohttp.ClientSession(trust_env=False, timeout=timeout) as session, \
                session.get(feed.url, headers=headers) as response:
            feed.last_status = response.status
            if response.status == 304:
                return FeedAnswer(304)
            if response.status != 200:
                return FeedAnswer(response.status,
                                  error=f"HTTP {response.status} {response.reason or ''}".strip())
            body = await response.content.read(MAX_FEED_BYTES + 1)
            return FeedAnswer(200, body, response.headers.get("ETag"), response.headers.get("Last-Modified"))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return FeedAnswer(error=describe(exc))
