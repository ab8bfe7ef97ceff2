"""The pure parts import no mitmproxy: they run, and are tested, without a proxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PURE = ["addons.envelope", "addons.envelope.schema", "addons.upstream.forwarder", "addons.upstream.schema",
        "addons.upstream.decompress", "addons.upstream.health", "addons.upstream.retry", "addons.rules.schema",
        "addons.rules.loader", "addons.redact", "addons.errors", "addons.explicit", "addons.limits", "addons.text"]


def test_the_pure_parts_load_without_mitmproxy() -> None:
    code = ("import sys\n"
            f"for name in {PURE!r}:\n"
            "    __import__(name)\n"
            "print(sorted(m for m in sys.modules if m == 'mitmproxy' or m.startswith('mitmproxy.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
