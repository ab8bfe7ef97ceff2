"""An exception in one of our hooks must never let a call through (mitmproxy would forward it)."""

from __future__ import annotations

import json

from mitmproxy.test import tflow, tutils

from addons.chain.context import GatewayContext, fail_closed


class Exploding:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    @fail_closed
    async def request(self, flow: object) -> None:
        raise RuntimeError("secret-value-in-exception-text")


async def test_a_raising_hook_answers_3002_and_hides_the_exception_text(caplog: object) -> None:
    gw = GatewayContext()
    flow = tflow.tflow(req=tutils.treq(host="api.example.test"))
    await Exploding(gw).request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 500
    body = json.loads(flow.response.content or b"")
    assert body["code"] == -3002 and body["source"] == "gateway"
    assert flow.response.headers["X-Gateway-Code"] == "-3002"
    assert "secret-value-in-exception-text" not in flow.response.text
    assert "secret-value-in-exception-text" not in caplog.text  # type: ignore[attr-defined]
