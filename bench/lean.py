"""The bare-lean row: bare mitmdump with only the gateway's addon pruning (no gateway chain), so the
table shows what mitmproxy's idle default addons cost by themselves."""

from __future__ import annotations

import sys
from pathlib import Path

# mitmproxy loads this file as a script: make the project importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons.chain.lean import LeanAddons  # noqa: E402

addons = [LeanAddons()]
