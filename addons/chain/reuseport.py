"""Workers sharing one listen port (GATEWAY_WORKERS, SPEC 12): several gateway processes listen on
one port with SO_REUSEPORT and the kernel spreads the callers' connections over them. No balancer
sits between caller and worker, so each worker sees the caller's real address (`sources`, the
access log) and no proxy hop costs CPU.

mitmproxy binds its listeners with `asyncio.start_server` and has no option for SO_REUSEPORT, and
a `-s` script is loaded concurrently with the listeners being bound: so this is applied before
mitmproxy starts, by `scripts/mitmdump_shared.py` (what `scripts/workers.sh` runs)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class _AsyncioReusingPorts:
    """The asyncio module as mitmproxy's listener module sees it, with reuse_port on start_server."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        kwargs.setdefault("reuse_port", True)
        return await asyncio.start_server(*args, **kwargs)


def share_listen_port() -> None:
    """From now on mitmproxy's proxy listeners set SO_REUSEPORT (call before mitmproxy binds them)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("gateway: GATEWAY_WORKERS needs SO_REUSEPORT, which this platform lacks")
    from mitmproxy.proxy import mode_servers

    mode_servers.asyncio = _AsyncioReusingPorts()  # type: ignore[assignment]
