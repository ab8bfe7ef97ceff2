"""mitmdump whose proxy listeners set SO_REUSEPORT, so GATEWAY_WORKERS processes share one port
(see addons/chain/reuseport.py). Arguments are mitmdump's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os  # noqa: E402

from addons.chain.reuseport import share_listen_port  # noqa: E402

share_listen_port()
if os.environ.get("GATEWAY_TERMLOG_STDERR") == "1":  # see scripts/mitmproxy_main.py
    from addons.chain.stdout import termlog_to_stderr

    termlog_to_stderr()

from mitmproxy.tools.main import mitmdump  # noqa: E402

sys.exit(mitmdump())
