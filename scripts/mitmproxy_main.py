"""mitmdump or mitmweb as run_proxy.sh starts them: `mitmproxy_main.py mitmdump|mitmweb ARGS...`.

With GATEWAY_TERMLOG_STDERR=1 (run_proxy.sh sets it when the access log goes to stdout), mitmproxy's
own log goes to stderr from its very first line, so stdout holds the JSON access log only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.chain.stdout import termlog_to_stderr_if_asked

termlog_to_stderr_if_asked()

from mitmproxy.tools.main import mitmdump, mitmweb  # noqa: E402

tools = {"mitmdump": mitmdump, "mitmweb": mitmweb}
if len(sys.argv) < 2 or sys.argv[1] not in tools:
    sys.exit("usage: mitmproxy_main.py mitmdump|mitmweb [mitmproxy arguments]")
name = sys.argv.pop(1)
sys.argv[0] = name  # what --help and error messages call the program
sys.exit(tools[name]())
