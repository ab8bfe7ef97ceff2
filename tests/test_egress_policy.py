"""The pure egress policy (SPEC 12), and the connect-time pin against DNS rebinding."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons

from addons.chain.context import GatewayContext
from addons.chain.egress import Egress
from addons.egress.policy import EgressPolicy, Endpoint, HostPatterns, parse_ip
from addons.rules.loader import load_sources
from addons.runtime import compile_rules

ip = ipaddress.ip_address


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fd00::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "::127.0.0.1",
])
def test_private_addresses_in_every_form_are_refused(address: str) -> None:
    assert EgressPolicy().refusal(ip(address), 80) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert EgressPolicy().refusal(ip(address), 443) is None


def test_allow_cidrs_and_deny_private_false() -> None:
    policy = EgressPolicy(allow_cidrs=(ipaddress.ip_network("10.20.0.0/16"),))
    assert policy.refusal(ip("10.20.1.1"), 80) is None
    assert policy.refusal(ip("::ffff:10.20.1.1"), 80) is None
    assert policy.refusal(ip("10.21.1.1"), 80) is not None
    assert EgressPolicy(deny_private=False).refusal(ip("10.21.1.1"), 80) is None


def test_the_gateway_itself_is_never_reachable_whatever_allow_cidrs_or_deny_private_say() -> None:
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    policy = EgressPolicy(deny_private=False, allow_cidrs=everything,
                          protected=(Endpoint(ip("127.0.0.1"), 8080), Endpoint(None, 9091)))
    for address in ("127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "0.0.0.0"):
        assert policy.refusal(ip(address), 8080) is not None, address
    assert policy.refusal(ip("10.0.0.5"), 9091) is not None  # listening on every address
    assert policy.refusal(ip("127.0.0.1"), 8081) is None


def test_a_service_upstream_is_refused_by_address_but_a_shared_public_address_by_name_is_not() -> None:
    policy = EgressPolicy(deny_private=False, service_addresses={(ip("127.0.0.1"), 9000): "sms",
                                                                 (ip("93.184.216.34"), 443): "cdn"})
    assert "sms" in (policy.refusal(ip("127.0.0.1"), 9000, named=True) or "")
    assert policy.refusal(ip("93.184.216.34"), 443, named=False) is not None
    assert policy.refusal(ip("93.184.216.34"), 443, named=True) is None  # another site on the same CDN


def test_choose_refuses_a_name_when_any_address_is_private() -> None:
    chosen, reason = EgressPolicy().choose([ip("93.184.216.34"), ip("127.0.0.1")], 80)
    assert chosen is None and reason is not None
    chosen, reason = EgressPolicy().choose([ip("93.184.216.34")], 80)
    assert chosen == ip("93.184.216.34") and reason is None
    assert EgressPolicy().choose([], 80)[1] == "the host does not resolve"


def test_parse_ip_and_host_patterns() -> None:
    assert parse_ip("[::ffff:127.0.0.1]") == ip("::ffff:127.0.0.1")
    assert parse_ip("fe80::1%eth0") == ip("fe80::1")
    assert parse_ip("example.com") is None
    patterns = HostPatterns(["*.amazonaws.com", "api.example.com"])
    assert patterns.match("s3.eu-west-1.amazonaws.com") and patterns.match("API.example.com.")
    assert not patterns.match("amazonaws.com.evil.test") and not patterns.match("example.com")
    assert not HostPatterns([]).match("anything.test")


def test_egress_schema_errors_are_clear(tmp_path: Any) -> None:
    _rules, problems = load_sources([("gw.yaml", "gateway: {egress: {allow_cidrs: [not-a-network]}}\n"),
                                    ("apps.yaml", "apps:\n  a: {secret: x, passthrough: ['bad host!']}\n")],
                                   tmp_path)
    text = "\n".join(str(p) for p in problems)
    assert "allow_cidrs" in text and "passthrough" in text


class _Credentials:
    def for_service(self, spec: Any) -> Any:
        return self


async def test_a_name_that_rebinds_to_loopback_at_connect_time_is_refused(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    gw = GatewayContext()
    egress = Egress(gw)
    rules, problems = load_sources([("gw.yaml", "gateway: {require_app: false}\n")], tmp_path)
    assert not problems
    gw.compiled, _ = compile_rules(rules, None, _Credentials())
    answers = iter(["93.184.216.34", "127.0.0.1"])  # public when checked first, loopback a moment later

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        address = next(answers) if host == "rebind.test" else "198.51.100.7"  # the gateway host's own name
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    with taddons.context(egress) as tctx:
        tctx.options.listen_port = 8080
        import asyncio

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        client = connection.Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8080))
        first = connection.Server(address=("rebind.test", 80))
        await egress.server_connect(server_hooks.ServerConnectionHookData(first, client))
        assert first.error is None and first.address == ("93.184.216.34", 80)  # pinned to what was checked
        egress.server_connected(server_hooks.ServerConnectionHookData(first, client))
        assert first.address == ("rebind.test", 80)
        second = connection.Server(address=("rebind.test", 80))
        await egress.server_connect(server_hooks.ServerConnectionHookData(second, client))
        assert second.error is not None and second.address == ("rebind.test", 80)
