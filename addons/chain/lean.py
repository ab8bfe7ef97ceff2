"""Run the gateway on only the mitmproxy addons it needs (SPEC 11).

mitmproxy walks every addon of its chain for every event of every flow, so each default addon the
gateway does not use costs throughput (about 1.5x for bare mitmdump, measured). At `running` this
addon removes the default addons that are idle in this configuration, and keeps:

- the ones the proxy itself is made of (`ALWAYS_KEPT`: core, proxyserver, TLS, scripts, ...),
  mitmweb's UI parts and the addons behind its commands (`WEB_KEPT`), and `block` (mitmproxy's
  refusal of clients from public addresses is on by default);
- every addon one of whose options the user has set (a value other than the default, or named in a
  `--set` argument): `-w flows`, `--set map_remote=...`, `--set modify_headers=...`, ... keep their
  addon, so no option is ever silently ignored;
- the ones a listen mode needs (`alt-svc` rewriting for reverse mode, DNS record stripping for the
  modes that carry DNS).

An option of a removed addon set later (mitmproxy's `set` command, mitmweb's options editor) is
refused with an error naming it. `--set gateway_lean=false` keeps every default addon."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from mitmproxy import ctx, exceptions

log = logging.getLogger("gateway")

# Addon names (mitmproxy's `addons.get` names) the proxy cannot run without.
ALWAYS_KEPT = frozenset({
    "core", "proxyserver", "nextlayer", "tlsconfig", "scriptloader", "dnsresolver",
    "keepserving", "errorcheck", "termlog", "readfilestdin",
    "block",        # block_global is on by default: clients from public addresses are refused
    "disableh2c",   # mitmproxy cannot carry h2c upgrades; this turns them away cleanly
})
# mitmweb: the UI and what its menus call (replay, export, comment, save, cut).
WEB_KEPT = frozenset({
    "webaddon", "webauth", "intercept", "staticviewer", "view", "eventstore",
    "clientplayback", "serverplayback", "export", "comment", "cut", "save", "savehar", "browser",
    "commandhistory",
})
# Modes under which mitmproxy sees DNS queries (so the HTTPS-record stripping matters).
_DNS_MODES = ("dns", "wireguard", "local", "transparent")


class _OptionRecorder:
    """A stand-in for mitmproxy's Loader that notes the option names an addon registers."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_option(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.names.append(name)

    def add_command(self, *args: Any, **kwargs: Any) -> None:
        pass


def options_of(addon: object) -> list[str]:
    """The option names `addon` registers in its load hook (a fresh instance is asked, so the live
    one is not touched)."""
    load = getattr(type(addon), "load", None)
    if load is None:
        return []
    recorder = _OptionRecorder()
    try:
        load(type(addon)(), recorder)
    except Exception:  # an addon whose load needs more than a loader: count it as set by the user
        return ["?"]
    return recorder.names


def set_on_command_line(argv: Sequence[str]) -> set[str]:
    """Option names given with `--set NAME=...` (or `--set=NAME=...`), default value or not."""
    names: set[str] = set()
    for i, arg in enumerate(argv):
        value = None
        if arg == "--set" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--set="):
            value = arg[len("--set="):]
        if value:
            names.add(value.split("=", 1)[0].strip())
    return names


def user_set(option_names: Iterable[str], explicit: set[str]) -> list[str]:
    """Of `option_names`, those the user has set: a non-default value, or named on the command line."""
    found = []
    for name in option_names:
        if name == "?":
            found.append(name)
            continue
        known = name in ctx.options
        if name in explicit or (known and getattr(ctx.options, name) != ctx.options.default(name)):
            found.append(name)
    return found


def addon_name(addon: object) -> str:
    """The name mitmproxy's AddonManager files an addon under."""
    return str(getattr(addon, "name", type(addon).__name__.lower()))


def needed_by_mode(name: str, modes: Sequence[str]) -> bool:
    if name == "updatealtsvc":
        return any(m.startswith("reverse:") for m in modes)
    if name == "stripdnshttpsrecords":
        return any(m.split(":", 1)[0].split("@", 1)[0] in _DNS_MODES for m in modes)
    return False


class LeanAddons:
    def __init__(self) -> None:
        self.removed: dict[str, dict[str, Any]] = {}  # addon name -> its options' values at removal
        self.kept_for: dict[str, list[str]] = {}  # addon name -> the user's options that kept it

    def load(self, loader) -> None:
        loader.add_option("gateway_lean", bool, True,
                          "Remove the default mitmproxy addons this configuration leaves idle "
                          "(false: keep them all).")

    def configure(self, updated: set[str]) -> None:
        # A value differing from the one seen at pruning is a change the removed addon would miss.
        late = sorted(name for name in updated for options in self.removed.values()
                      if name in options and getattr(ctx.options, name, None) != options[name])
        if late:
            owners = sorted(a for a, options in self.removed.items() if set(options) & set(late))
            raise exceptions.OptionsError(
                f"{', '.join(late)}: the gateway runs without mitmproxy's {', '.join(owners)} addon; "
                "set it on the command line at start (the addon is then kept)")

    def running(self) -> None:
        # Synchronous: mitmproxy runs a reloaded script's running hook from sync code.
        if ctx.options.gateway_lean:
            try:
                self.prune(ctx.master, sys.argv)
            except Exception as exc:  # the safe side of a failed prune: every default addon stays
                log.error("gateway: idle mitmproxy addons not removed: %s", type(exc).__name__)

    def prune(self, master: Any, argv: Sequence[str]) -> None:
        # What earlier loads of the chain removed stays on record across reloads of the script.
        self.removed = _removed_of.setdefault(master, {})
        manager = master.addons
        web = manager.get("webaddon") is not None
        keep = ALWAYS_KEPT | (WEB_KEPT if web else frozenset())
        explicit = set_on_command_line(argv)
        modes = list(getattr(ctx.options, "mode", []) or [])
        for addon in list(manager.chain):
            name = addon_name(addon)
            if (addon is self or getattr(addon, "addons", None) is not None or name in keep
                    or manager.get(name) is not addon):
                continue  # scripts and addons with children (ours among them) stay
            options = options_of(addon)
            chosen = user_set(options, explicit)
            if name == "dumper":  # its default prints every flow; flow_detail=0 silences it entirely
                chosen = ["flow_detail"] if ctx.options.flow_detail != 0 else []
            if chosen:
                self.kept_for[name] = chosen
                continue
            if needed_by_mode(name, modes):
                self.kept_for[name] = ["mode"]
                continue
            _remove(manager, addon)
            self.removed[name] = {o: getattr(ctx.options, o, None) for o in options}
        log.info("gateway: mitmproxy addons removed as idle: %s; kept for options set: %s",
                 ", ".join(sorted(self.removed)) or "none",
                 ", ".join(f"{a} ({', '.join(o)})" for a, o in sorted(self.kept_for.items())) or "none")


_removed_of: weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()
_pending: set[asyncio.Task[Any]] = set()  # async done hooks under way (a task needs a reference)


def _remove(manager: Any, addon: Any) -> None:
    # AddonManager.remove runs the addon's done hook synchronously, which an async done hook
    # (ClientPlayback's) refuses; the same steps, an async hook run as a task.
    name = addon_name(addon)
    manager.chain = [a for a in manager.chain if a is not addon]
    manager.lookup.pop(name, None)
    forget = getattr(manager, "forget", None)  # a MemoAddonManager's remembered hooks (chain/dispatch.py)
    if forget is not None:
        forget()
    done = getattr(addon, "done", None)
    if done is None:
        return
    result = done()
    if inspect.iscoroutine(result):
        try:
            task = asyncio.get_running_loop().create_task(result)
        except RuntimeError:  # no loop: the addon never started anything to stop
            result.close()
            return
        _pending.add(task)
        task.add_done_callback(_pending.discard)
