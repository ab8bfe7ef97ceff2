"""Bounds on what the gateway buffers whole. Free of mitmproxy."""

from __future__ import annotations

MIB = 1024 * 1024
# A service call's body, either way: the caller's request (retries and signatures need all of it)
# and the provider's answer, as received and once decoded. Larger is refused, never buffered.
MAX_BODY = 64 * MIB
