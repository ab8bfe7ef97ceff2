"""Writes each call's access-log line and counts it in the metrics, once, whatever way it ended."""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, http

from addons.accesslog import AccessLog, log_record
from addons.chain.context import GatewayContext, fail_closed
from addons.chain.stdout import stdout_for_the_access_log
from addons.errors import Code, code_for_status

log = logging.getLogger("gateway")

def passthrough_code(status: int) -> int:
    """Pass-through answers (hosts no service owns) get a code from their HTTP status, like the
    adapters do; any status below 400 is success."""
    return Code.OK if status < 400 else code_for_status(status)


class AccessLogger:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.finish = self._finish  # for calls that end without a response hook (a refused CONNECT)

    def load(self, loader) -> None:
        loader.add_option("gateway_log", str, "", "File for the access log (JSON lines); empty: stdout.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_log" in updated:
            old = self.gw.access_log
            self.gw.access_log = AccessLog(ctx.options.gateway_log or None)
            if not ctx.options.gateway_log:
                stdout_for_the_access_log(ctx.master)
            if old is not None:
                old.close()

    def done(self) -> None:
        if self.gw.access_log is not None:
            self.gw.access_log.close()

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or flow.response is None:
            return
        if call.passthrough and call.code is None:
            call.status = flow.response.status_code
            call.code = passthrough_code(call.status)
            call.attempts = 1
        self._finish(flow)

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or call.logged:
            return
        message = flow.error.msg if flow.error else ""
        if call.code is None:
            if call.passthrough:
                call.code, call.status = Code.UPSTREAM_UNAVAILABLE, 502
            elif call.route is None:
                # mitmproxy refused the request before the chain saw it (a malformed request, a client
                # that went away): the caller's side, not the gateway's.
                call.code = Code.CALLER_INVALID
                call.status = 499 if "disconnect" in message.lower() else 400
            else:
                call.code, call.status = Code.GATEWAY_INTERNAL, 502
        elif flow.error is not None and "client disconnected" in flow.error.msg.lower():
            # The answer was made but the caller had gone: nginx's 499 says so in the log.
            call.status = 499
        call.error = call.error or (flow.error.msg if flow.error else "connection error")
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or call.logged:
            return
        call.logged = True
        try:
            code = call.code if call.code is not None else Code.OK
            self.gw.metrics.observe_call(call.service, call.method, call.app, code,
                                         time.perf_counter() - call.started)
            if self.gw.access_log is not None:
                self.gw.access_log.write(log_record(call, self.gw.redactor))
            if code != Code.OK:
                self.gw.recent_failures.add(call, self.gw.redactor)
            if call.span is not None:
                from addons.chain.tracing import end_call

                end_call(self.gw, call)
        except Exception as exc:  # logging must never break the answer already given
            log.error("gateway: access log failed for %s: %s", call.request_id, type(exc).__name__)
