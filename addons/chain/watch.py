"""What makes the gateway reload its rules (SPEC 10, hot reload), and the remote rules feed.

Triggers, all ending in `Rules.reload`, which validates everything first and keeps the rules in
force entirely when anything is wrong (the error goes to the log, /status and
`gateway_rules_reloads_total{result="error"}`):

- A change in the rules directory: watched with inotify through `watchfiles.awatch`, or by polling
  every 0.5 s where inotify is unavailable (container file systems, exhausted inotify limits).
  Changes are debounced: the reload starts after 300 ms without further changes, so an editor's
  truncate-then-write, or `cp` of several files, is one reload. A change takes effect well within 2 s.
  Every change counts except editor droppings (swap files, `~` backups): files that rules reference
  (`file:` PEM keys in subdirectories) and Kubernetes ConfigMap swaps (`..data`) reload too.
- SIGHUP: reloads at once, and makes the next poll of the remote feed unconditional (no
  If-None-Match), so one signal re-reads everything.
- The mitmproxy command `gateway.reload` (for mitmweb users): the same as SIGHUP.

Remote rules (`gateway_rules_url`, env GATEWAY_RULES_URL), polled every `gateway_rules_poll` seconds:

- The body is YAML documents separated by `---` lines; each document is one rule file, named
  `<url>#N` (N counts the non-empty documents from 1) in problems, logs and /status. The URL is
  always shown redacted: a `user:password@` password and secret-named query parameters (`token=`)
  become `***`.
- Remote and local combine into ONE rule set, validated together exactly as if the documents were
  more files in the rules directory: a service or an app defined both locally and remotely (or twice
  remotely) is an error, as are two `gateway:` sections, and a host claimed by two services. Neither
  side overrides the other: an operator who wants a fleet-wide rule in the feed removes the local
  file. A reload triggered by either side always combines the newest local files with the remote
  documents in force.
- Requests carry `If-None-Match` (the last ETag) and `If-Modified-Since` (the last Last-Modified).
  304 changes nothing. A 200 whose documents differ from those in force is tried: on success they
  are in force; on any problem the previous documents stay (a broken feed never takes down the rules
  in force), the problems are shown in /status and logged once, and that body is not tried again
  until it changes, a SIGHUP or `gateway.reload` arrives, or a local change reloads successfully
  (then the rejected documents are tried once more: the conflict may have been on the local side).
- A fetch that fails (connection error, timeout, an HTTP status other than 200/304, a body that is
  not UTF-8 or larger than 16 MiB, or an empty body while documents are in force) keeps the
  documents in force. It is logged when the feed's state changes (ok -> failing, a different
  error, failing -> ok), not on every poll, and shown in /status.
- Each set of remote documents put in force is saved to `gateway_rules_cache` (default: beside the
  rules directory, `<rules>.remote-cache`; `off`: none). At start the gateway serves the local rules
  plus that saved copy at once; /readyz stays 503 until remote rules are in force (fetched, or the
  saved copy), or the feed answered, so a restart during a feed outage serves what the fleet served
  and a fresh instance with nothing saved waits for the feed. /readyz and /status say which
  (`remote_rules`: feed | cache | none).
- Changing `gateway_rules_url` at run time drops the old feed's documents (with a reload)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import command, ctx, exceptions
from watchfiles import DefaultFilter, awatch

from addons import rules_cache
from addons.chain.context import GatewayContext
from addons.chain.rules import Rules
from addons.redact import Redactor
from addons.rules.loader import Problem, load_directory
from addons.rules.remote import (
    MAX_FEED_BYTES,
    RemoteFeed,
    Source,
    describe,
    digest_of,
    fetch,
    named_documents,
)
from addons.timestamps import rfc3339

log = logging.getLogger("gateway")

DEBOUNCE_MS = 300  # quiet time after the last change before the reload starts
MAX_GROUP_MS = 1500  # a directory that never goes quiet is still reloaded this often
POLL_DELAY_MS = 500  # polling fallback: how often the directory is scanned

class Watch:
    def __init__(self, gw: GatewayContext, rules: Rules) -> None:
        self.gw = gw
        self.rules = rules
        self.feed = RemoteFeed()
        self.mode = "stopped"  # inotify | polling | waiting (directory missing) | stopped
        self.directory: str | None = None
        self.last_change_at: float | None = None
        self.last_trigger = ""
        self._running = False
        self._watch_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._stop_watch = threading.Event()  # seen by the watchfiles thread, which cannot be cancelled
        self._wake = asyncio.Event()
        self._reloads: set[asyncio.Task[list[Problem]]] = set()  # SIGHUP / command reloads under way
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self.awatch: Callable[..., AsyncIterator[set[tuple[Any, str]]]] = awatch  # replaceable in tests

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("gateway_rules_url", str, "",
                          "URL polled for remote rule files (YAML documents separated by ---); empty: none.")
        loader.add_option("gateway_rules_poll", int, 10, "Seconds between polls of gateway_rules_url.")
        loader.add_option("gateway_rules_cache", str, "",
                          "File keeping the last good remote rules for a restart during a feed outage; "
                          "empty: <gateway_rules>.remote-cache beside the rules directory; 'off': none.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_rules_poll" in updated and ctx.options.gateway_rules_poll < 1:
            raise exceptions.OptionsError("gateway_rules_poll must be at least 1 (seconds)")
        if "gateway_rules_url" in updated:
            self._set_url(ctx.options.gateway_rules_url.strip())
        if "gateway_rules" in updated and self._running:
            self._start_watcher()

    def running(self) -> None:
        # Sync on purpose: an `async def running` stops mitmproxy's script reload from working.
        self._running = True
        loop = asyncio.get_running_loop()
        self._start_watcher()
        if self.feed.url:
            self._load_cache()
            self._start_poller()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            self._signal_loop = loop
        except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
            # Windows has no SIGHUP; a loop outside the main thread cannot take signal handlers.
            log.warning("gateway: SIGHUP reload unavailable (%s); use the gateway.reload command", exc)

    def done(self) -> None:
        self._running = False
        self._stop_watcher()
        self._stop_poller()
        if self._signal_loop is not None:
            with contextlib.suppress(Exception):
                self._signal_loop.remove_signal_handler(signal.SIGHUP)
            self._signal_loop = None

    @command.command("gateway.reload")
    def reload_command(self) -> None:
        """Reload the rules now (directory and remote feed), like SIGHUP."""
        self._reload_soon("gateway.reload command")

    # -- reloading ----------------------------------------------------------------------------------

    def _sighup(self) -> None:
        self._reload_soon("SIGHUP")

    def _reload_soon(self, reason: str) -> None:
        # The rules are read in a worker thread (Rules.reload_async): a task waits for it.
        task = asyncio.get_running_loop().create_task(self.reload_now(reason))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_now(self, reason: str) -> list[Problem]:
        """Reload at once and make the remote feed be fetched again without validators."""
        log.info("gateway: reloading the rules (%s)", reason)
        problems = await self.reload(reason)
        if self.feed.url:
            self.feed.force = True
            self.feed.rejected_digest = None
            self._wake.set()
        return problems

    async def reload(self, reason: str) -> list[Problem]:
        self.last_trigger = reason
        problems = await self.rules.reload_async(reason)
        if not problems and self.feed.rejected is not None:
            # The rejected remote documents may have conflicted with a local file that is now fixed.
            await self._try_remote(self.feed.rejected, self.feed.rejected_digest,
                                   "remote rules retried after " + reason)
        return problems

    async def _try_remote(self, documents: list[Source], digest: str | None, reason: str) -> bool:
        """One reload with these remote documents; they are in force only if it succeeds. On a
        problem the rules and the remote documents in force stay, so a later local reload does not
        pick up the broken ones (Rules.reload logged the problems)."""
        return self._judged(documents, digest, await self.rules.reload_async(reason, remote=documents))

    def _judged(self, documents: list[Source], digest: str | None, problems: list[Problem]) -> bool:
        if problems:
            self.feed.refused(documents, digest, [str(p) for p in problems])
            return False
        self.feed.accepted(documents, digest)
        return True

    # -- the rules directory ------------------------------------------------------------------------

    def _start_watcher(self) -> None:
        self._stop_watcher()
        self._stop_watch = threading.Event()
        self.directory = ctx.options.gateway_rules
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(self.directory, self._stop_watch), name="gateway rules watcher")

    def _stop_watcher(self) -> None:
        self._stop_watch.set()  # the watchfiles thread checks it every step and returns
        if self._watch_task is not None and not self._watch_task.done():
            self._watch_task.cancel()
        self._watch_task = None
        self.mode = "stopped"

    async def _watch(self, directory: str, stop: threading.Event) -> None:
        force_polling = False
        missing = False  # logged as missing: its reappearance is a change
        while not stop.is_set():
            if not os.path.isdir(directory):
                # Nothing to watch yet (a volume not mounted, a directory being replaced): wait for it.
                if not missing:
                    log.warning("gateway: rules directory %s does not exist; watching for it to appear", directory)
                    missing = True
                self.mode = "waiting"
                await asyncio.sleep(POLL_DELAY_MS / 1000)
                continue
            if missing:
                missing = False
                await self._changed(directory, "rules directory appeared")
            self.mode = "polling" if force_polling else "inotify"
            try:
                missing = await self._watch_directory(directory, stop, force_polling)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():
                    break
                if not os.path.isdir(directory):
                    continue  # removed under the watcher: wait for it at the top
                if not force_polling:
                    log.warning("gateway: cannot watch %s with inotify (%s: %s); polling it every %d ms instead",
                                directory, type(exc).__name__, exc, POLL_DELAY_MS)
                    force_polling = True
                    continue
                log.error("gateway: watching %s failed (%s: %s); retrying", directory, type(exc).__name__, exc)
                await asyncio.sleep(1)
            else:
                # awatch ends when its directory goes away (or on stop): check again from the top.
                await asyncio.sleep(POLL_DELAY_MS / 1000 if not stop.is_set() else 0)

    async def _watch_directory(self, directory: str, stop: threading.Event, force_polling: bool) -> bool:
        """Reload on every group of changes until the directory is removed or replaced, or `stop`;
        whether it is missing now."""
        inode = os.stat(directory).st_ino
        async for changes in self.awatch(
                directory, watch_filter=DefaultFilter(), debounce=MAX_GROUP_MS, step=DEBOUNCE_MS,
                stop_event=stop, force_polling=force_polling, poll_delay_ms=POLL_DELAY_MS,
                recursive=True, rust_timeout=1000):
            await self._changed(directory, _change_reason(sorted({os.path.basename(path) for _, path in changes})))
            if not _same_directory(directory, inode):
                # Removed or replaced (renamed over): a watch on the old inode would never see the
                # new directory's files, so start over on whatever is there now.
                if not os.path.isdir(directory):
                    log.warning("gateway: rules directory %s was removed; the rules in force stay, "
                                "watching for it to reappear", directory)
                    return True
                return False
        return False

    async def _changed(self, directory: str, what: str) -> None:
        self.last_change_at = time.time()
        try:
            await self.reload(what)
        except Exception as exc:  # a bug in a reload must not end the watcher
            log.error("gateway: reload after a change in %s failed: %s: %s", directory, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))

    def watch_status(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "mode": self.mode,
            "debounce_ms": DEBOUNCE_MS,
            "last_change_at": rfc3339(self.last_change_at),
            "last_trigger": self.last_trigger or None,
        }

    # -- the remote feed ----------------------------------------------------------------------------

    def _set_url(self, url: str) -> None:
        if url == self.feed.url:
            return
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise exceptions.OptionsError(
                f"gateway_rules_url must be an http:// or https:// URL, got {Redactor().url(url)!r}")
        self._stop_poller()
        self.feed = RemoteFeed.for_url(url)
        if self.rules.remote_sources:
            # Dropped whether or not the local rules load now: they belong to a feed no longer asked.
            self.rules.remote_sources = []
            self.rules.reload("gateway_rules_url changed")
        if url:
            log.info("gateway: remote rules from %s every %ds", self.feed.shown, ctx.options.gateway_rules_poll)
            if self._running:
                self._start_poller()

    def remote_settled(self) -> bool:
        return self.feed.settled_for_readiness()

    def _cache_path(self) -> str:
        configured = ctx.options.gateway_rules_cache.strip()
        if configured == "off":
            return ""
        return configured or rules_cache.default_path(ctx.options.gateway_rules)

    def _load_cache(self) -> None:
        """At start: the saved copy of this feed in force at once, until the feed answers."""
        feed = self.feed
        feed.cache_path = self._cache_path()
        if not feed.cache_path:
            return
        text = rules_cache.load(feed.cache_path, feed.url, MAX_FEED_BYTES)
        if text is None:
            return
        documents = named_documents(feed.shown, text)
        digest = digest_of(text.encode())
        # Checked before the reload: a refused copy is a WARNING here, as a refused feed is, since an
        # ERROR during mitmproxy's start makes it exit, and the local rules in force serve meanwhile.
        _, problems = load_directory(ctx.options.gateway_rules, extra=documents)
        if problems:
            log.warning("gateway: the saved remote rules %s are not used (the feed is asked instead):\n  %s",
                        feed.cache_path, "\n  ".join(str(p) for p in problems))
            self._judged(documents, digest, problems)
            return
        # At start, before serving: the one synchronous reload (mitmproxy's `running` is not awaited).
        problems = self.rules.reload(f"saved remote rules from {feed.cache_path}", remote=documents)
        if self._judged(documents, digest, problems):
            feed.in_force = "cache"
            log.info("gateway: remote rules from the saved copy %s in force (%d document(s)) until %s answers",
                     feed.cache_path, len(documents), feed.shown)

    async def _save_cache(self, feed: RemoteFeed, text: str) -> None:
        if not feed.cache_path:
            feed.cache_path = self._cache_path()
        if not feed.cache_path:
            return
        try:
            await asyncio.to_thread(rules_cache.save, feed.cache_path, feed.url, text)
        except OSError as exc:
            if feed.cache_error is None:
                log.warning("gateway: could not save the remote rules to %s: %s", feed.cache_path, describe(exc))
            feed.cache_error = describe(exc)
            return
        feed.cache_error, feed.cache_saved_at = None, time.time()

    def _start_poller(self) -> None:
        self._stop_poller()
        self._wake = asyncio.Event()
        self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop(self.feed),
                                                                 name="gateway remote rules")

    def _stop_poller(self) -> None:
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
        self._poll_task = None

    async def _poll_loop(self, feed: RemoteFeed) -> None:
        await _startup_checked()
        while True:
            try:
                await self.poll(feed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one poll must not end polling
                feed.failed(f"internal error ({type(exc).__name__})")
            feed.settled = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=ctx.options.gateway_rules_poll)
            self._wake.clear()

    async def poll(self, feed: RemoteFeed) -> None:
        forced = feed.force
        answer = await fetch(feed, max(1, ctx.options.gateway_rules_poll))
        offer = feed.offer(answer, len(self.rules.remote_sources), forced)
        if offer is None:
            return
        if await self._try_remote(offer.documents, offer.digest, f"remote rules from {feed.shown}"):
            log.info("gateway: remote rules from %s in force: %d document(s)", feed.shown, len(offer.documents))
            feed.in_force = "feed"
            await self._save_cache(feed, offer.text)
        else:
            log.warning("gateway: remote rules from %s refused (see the problems above); the rules in force "
                        "stay", feed.shown)

    def remote_status(self) -> dict[str, Any] | None:
        return self.feed.status(_poll_interval())


async def _startup_checked(limit: float = 5.0) -> None:
    """Wait until mitmproxy's start-up error check is over (at most `limit` seconds).

    mitmproxy exits when an ERROR is logged before its start completes. A remote document refused
    at start is logged as an error by Rules.reload, yet must not stop a gateway whose local rules
    are fine: the feed is fetched only once that check is done."""
    errorcheck = ctx.master.addons.get("errorcheck") if getattr(ctx, "master", None) else None
    handler = getattr(errorcheck, "logger", None)
    deadline = time.monotonic() + limit
    while handler is not None and handler in logging.getLogger().handlers and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _same_directory(directory: str, inode: int) -> bool:
    try:
        return os.stat(directory).st_ino == inode
    except OSError:
        return False


def _change_reason(names: list[str]) -> str:
    return "file change: " + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _poll_interval() -> int | None:
    try:
        return int(ctx.options.gateway_rules_poll)
    except (AttributeError, KeyError):
        return None
