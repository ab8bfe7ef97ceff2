"""The gateway runs on the mitmproxy addons it needs: idle defaults are removed at start, an option
the user set keeps its addon, and a later change to a removed addon's option is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from mitmproxy import exceptions
from mitmproxy.addons import mapremote, modifyheaders, save
from mitmproxy.test import taddons

from addons.chain.lean import LeanAddons, set_on_command_line
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway
from tests.test_e2e_smoke import rules_for


def removed_list(output: str) -> set[str]:
    found = re.search(r"mitmproxy addons removed as idle: ([^;]*);", output)
    assert found, output
    return {name.strip() for name in found.group(1).split(",")}


def test_idle_defaults_are_removed_and_calls_still_work(tmp_path: Path, confdir: Path,
                                                        fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    with Gateway(rules_for(tmp_path, fake), confdir, env={"DEMO_KEY": "injected-key-123456"}) as gw:
        r = requests.get("http://api.demo.test/hello", proxies=gw.proxies("order-service", "s3cret-order"),
                         timeout=10)
        assert r.status_code == 200 and r.json()["data"] == {"greeting": "hi"}
        removed = removed_list(gw.output())
        assert "hook dispatch memoized" in gw.output()
        assert "heap frozen" in gw.output()  # FrozenHeap (addons/chain/heap.py), on by default
    assert {"mapremote", "modifyheaders", "save", "dumper", "clientplayback", "proxyauth"} <= removed
    assert not removed & {"core", "proxyserver", "tlsconfig", "scriptloader", "block", "nextlayer"}


def test_options_the_user_sets_keep_their_addons_working(tmp_path: Path, confdir: Path,
                                                         fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"greeting": "hi"}))
    flows = tmp_path / "flows.mitm"
    args = ["-w", str(flows), "--set", "modify_headers=/~q/X-Added-By-Mitmproxy/yes",
            "--set", "anticache=false"]  # a default value, named on the command line: kept too
    gw = Gateway(rules_for(tmp_path, fake), confdir, env={"DEMO_KEY": "injected-key-123456"}, args=args)
    with gw:
        r = requests.get("http://api.demo.test/hello", proxies=gw.proxies("order-service", "s3cret-order"),
                         timeout=10)
        assert r.status_code == 200
        removed = removed_list(gw.output())
    assert not removed & {"save", "modifyheaders", "anticache"}
    assert fake.hits("/hello")[0].headers["x-added-by-mitmproxy"] == "yes"
    assert flows.stat().st_size > 0  # the flow was written by mitmproxy's Save
    assert "injected-key-123456" not in flows.read_bytes().decode(errors="replace")


def test_gateway_lean_false_keeps_every_default(tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    with Gateway(rules_for(tmp_path, fake), confdir, env={"DEMO_KEY": "k-123456"},
                 args=["--set", "gateway_lean=false"]) as gw:
        output = gw.output()
    assert "removed as idle" not in output
    assert "hook dispatch memoized" not in output  # mitmproxy's own AddonManager stays


async def test_a_later_change_to_a_removed_addons_option_is_refused() -> None:
    lean = LeanAddons()
    with taddons.context(lean) as tctx:
        tctx.master.addons.add(mapremote.MapRemote(), modifyheaders.ModifyHeaders(), save.Save())
        tctx.configure(lean, modify_headers=["/~q/X-Kept/1"])
        lean.prune(tctx.master, [])
        assert "mapremote" in lean.removed and "save" in lean.removed
        assert tctx.master.addons.get("mapremote") is None
        assert tctx.master.addons.get("modifyheaders") is not None  # its option was set
        with pytest.raises(exceptions.OptionsError, match=r"map_remote.*mapremote"):
            tctx.options.update(map_remote=["|example.com|127.0.0.1"])
        assert tctx.options.map_remote == []  # rolled back
        tctx.options.update(modify_headers=["/~q/X-Other/2"])  # a kept addon's option still changes


async def test_pruning_survives_a_reload_of_the_chain() -> None:
    from mitmproxy import hooks
    from mitmproxy.addons import clientplayback

    lean = LeanAddons()
    with taddons.context(lean) as tctx:
        tctx.master.addons.add(clientplayback.ClientPlayback(), mapremote.MapRemote())
        # A reloaded script's running hook is called from sync code (ScriptLoader): it must not be async.
        tctx.master.addons.invoke_addon_sync(lean, hooks.RunningHook())
        assert tctx.master.addons.get("clientplayback") is None  # its async done hook ran as a task
        tctx.master.addons.remove(lean)  # as a script reload does
        reloaded = LeanAddons()
        tctx.master.addons.add(reloaded)
        reloaded.prune(tctx.master, [])
        with pytest.raises(exceptions.OptionsError, match=r"map_remote"):
            tctx.options.update(map_remote=["|example.com|127.0.0.1"])


def test_set_arguments_are_read_in_both_spellings() -> None:
    argv = ["mitmdump", "--set", "anticache=false", "--set=block_list=:~d x:444", "-s", "g.py", "--set"]
    assert set_on_command_line(argv) == {"anticache", "block_list"}
