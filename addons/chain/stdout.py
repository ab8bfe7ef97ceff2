"""With the access log on stdout, stdout holds JSON lines only: mitmproxy's own messages (its event
log with the `client connect` lines, and flow output with `flow_detail` > 0) move to stderr, so a log
shipper reading stdout never meets a line that is not JSON."""

from __future__ import annotations

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
