"""The access log (SPEC 10): one redacted JSON object per call, one line, written off the event loop.

Lines go through a queue to a writer thread, so a slow disk or a blocked stdout pipe never stalls the
proxy; the queue is bounded and a full queue drops (and counts) lines rather than growing memory."""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from typing import IO, Any

from addons.call import Call
from addons.redact import Redactor
from addons.timestamps import rfc3339


def log_record(call: Call, redactor: Redactor) -> dict[str, Any]:
    return {
        "ts": rfc3339(call.ts),
        "request_id": call.request_id,
        "app": call.app,
        "service": call.service,
        "method": call.method,
        "http_method": call.http_method,
        "url": redactor.url(call.url),
        "status": call.status,
        "code": call.code,
        "source": _source(call.code),
        "attempts": call.attempts,
        "target": call.target,
        "latency_ms": round((time.perf_counter() - call.started) * 1000, 2),
        "upstream_ms": None if call.upstream_ms is None else round(call.upstream_ms, 2),
        "error": redactor.text(call.error) if call.error else None,
        **({"degraded": "state"} if call.degraded else {}),
        **({"cache": call.cache.result} if call.cache is not None else {}),
        **({"trace_id": call.trace_id} if call.trace_id else {}),
    }


def _source(code: int | None) -> str | None:
    from addons.errors import source_of

    return None if code is None else source_of(code)


class AccessLog:
    def __init__(self, path: str | None, max_queue: int = 100_000, interval: float = 0.05) -> None:
        self.path = path or None
        self.dropped = 0
        self.max_queue = max_queue
        self.interval = interval
        # deque.append is atomic under the GIL: the event loop pays no lock and wakes no thread per
        # line; the writer drains the deque every `interval`.
        self._lines: collections.deque[str] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-access-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        if len(self._lines) >= self.max_queue:
            self.dropped += 1
            return
        self._lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))

    def _open(self) -> IO[str]:
        if self.path:
            return open(self.path, "a", encoding="utf-8")
        return sys.stdout

    def _run(self) -> None:
        out = self._open()
        try:
            while True:
                if not self._lines:
                    if self._stop.is_set():
                        break
                    self._stop.wait(self.interval)
                    continue
                batch: list[str] = []
                while self._lines and len(batch) < 4096:
                    batch.append(self._lines.popleft())
                try:
                    out.write("\n".join(batch) + "\n")
                    out.flush()
                except (OSError, ValueError):
                    self.dropped += len(batch)
        finally:
            if out is not sys.stdout:
                out.close()

    def close(self, timeout: float = 5.0) -> None:
        """Write out what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)
