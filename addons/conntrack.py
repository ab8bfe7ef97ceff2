"""Client connection deadlines (SPEC 18): idle connections and clients sending headers too slowly.

mitmproxy's `tcp_timeout` counts inactivity on the whole connection, a call waiting on its provider
included, and nothing bounds how long a client may take to send one request's headers (slowloris:
a byte every few seconds keeps any inactivity timer happy). This tracker keeps one deadline per
client connection instead, from what the proxy tells us about it:

- opened, or a CONNECT answered (the tunnel's first request still has to come): the request's
  headers must be complete within `header_timeout`;
- headers received, a raw tunnel or WebSocket started: a call is in flight, no deadline;
- the last call in flight finished: the next request must arrive within `client_idle`.

Pure: no mitmproxy imports; the glue (addons/chain/connections.py) feeds it and closes what expires."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Client:
    inflight: int = 0
    deadline: float | None = None
    reason: str = ""


class ConnectionTracker:
    def __init__(self, header_timeout: float = 10.0, client_idle: float = 60.0) -> None:
        self.header_timeout = header_timeout
        self.client_idle = client_idle
        self._clients: dict[str, _Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def opened(self, key: str, now: float) -> None:
        self._clients[key] = _Client(0, now + self.header_timeout, "header timeout")

    def awaiting_headers(self, key: str, now: float) -> None:
        """A CONNECT was answered: the first request inside the tunnel is due within header_timeout."""
        client = self._clients.get(key)
        if client is not None and client.inflight == 0:
            client.deadline, client.reason = now + self.header_timeout, "header timeout"

    def started(self, key: str) -> None:
        client = self._clients.setdefault(key, _Client())
        client.inflight += 1
        client.deadline = None

    def finished(self, key: str, now: float) -> None:
        client = self._clients.get(key)
        if client is None:
            return
        client.inflight = max(0, client.inflight - 1)
        if client.inflight == 0:
            client.deadline, client.reason = now + self.client_idle, "idle"

    def closed(self, key: str) -> None:
        self._clients.pop(key, None)

    def expired(self, now: float) -> list[tuple[str, str]]:
        """(key, reason) of every connection past its deadline; they are forgotten here."""
        out = [(key, c.reason) for key, c in self._clients.items() if c.deadline is not None and c.deadline <= now]
        for key, _ in out:
            del self._clients[key]
        return out
