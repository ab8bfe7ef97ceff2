"""mitmdump whose proxy listeners set SO_REUSEPORT, so GATEWAY_WORKERS processes share one port
(see addons/chain/reuseport.py). Arguments are mitmdump's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.chain.reuseport import share_listen_port
from addons.chain.stdout import termlog_to_stderr_if_asked

share_listen_port()
termlog_to_stderr_if_asked()

from mitmproxy.tools.main import mitmdump  # noqa: E402

sys.exit(mitmdump())
