"""With the access log on stdout, stdout holds JSON lines only: mitmproxy's own messages (its event
log with the `client connect` lines, and flow output with `flow_detail` > 0) move to stderr, so a log
shipper reading stdout never meets a line that is not JSON."""

from __future__ import annotations

import os
import sys
from typing import Any


def stdout_for_the_access_log(master: Any) -> None:
    termlog = master.addons.get("termlog")
    handler = getattr(termlog, "logger", None)
    if handler is not None and getattr(handler, "file", None) is sys.stdout:
        handler.file = sys.stderr
    dumper = master.addons.get("dumper")
    if dumper is not None and getattr(dumper, "outfp", None) is sys.stdout:
        dumper.outfp = sys.stderr


def termlog_to_stderr_if_asked() -> None:
    """With GATEWAY_TERMLOG_STDERR=1 (run_proxy.sh sets it when the access log goes to stdout), make
    mitmproxy's terminal log print to stderr from its first line on. For a launcher to call before
    mitmproxy starts (scripts/mitmproxy_main.py, scripts/mitmdump_shared.py): mitmproxy logs
    "Loading script ..." before the chain is loaded, so `stdout_for_the_access_log` comes too late
    for that one line."""
    if os.environ.get("GATEWAY_TERMLOG_STDERR") != "1":
        return
    from mitmproxy.addons import termlog

    handler_init = termlog.TermLogHandler.__init__

    def to_stderr(self: Any, out: Any = None) -> None:
        handler_init(self, out or sys.stderr)

    termlog.TermLogHandler.__init__ = to_stderr  # type: ignore[method-assign]
