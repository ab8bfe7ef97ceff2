"""Bounded decompression of provider answers (SPEC 18).

A provider's answer is decoded to be classified; a small compressed body can inflate to gigabytes
(a gzip bomb). Every decoder here produces at most `limit` bytes, working in slices, and stops with
`DecodedTooLarge` past it. (mitmproxy's own `encoding.decode` has no limit, and it also keeps the
last decoded body in a module-level cache.)"""

from __future__ import annotations

import zlib

import brotli

try:  # Python 3.14
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

SLICE = 1024 * 1024  # output produced per step: the limit is checked at least this often


class DecodedTooLarge(ValueError):
    """The answer decodes to more than the limit (a ValueError: callers treat it as unreadable)."""


def _zlib(body: bytes, wbits: int, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        chunk = decompressor.decompress(data, SLICE)
        size += len(chunk)
        if size > limit:
            raise DecodedTooLarge(f"answer decodes to more than {limit} bytes")
        out.append(chunk)
        data = decompressor.unconsumed_tail
        if decompressor.eof or (not data and not chunk):
            break
    out.append(decompressor.flush())  # empty by now: the loop drained the pending output
    return b"".join(out)


def _deflate(body: bytes, limit: int) -> bytes:
    try:
        return _zlib(body, zlib.MAX_WBITS, limit)
    except zlib.error:
        # Some servers send raw DEFLATE without the zlib header (what mitmproxy also accepts).
        return _zlib(body, -zlib.MAX_WBITS, limit)


def _brotli(body: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        chunk = decompressor.process(data, output_buffer_limit=SLICE)
        data = b""
        size += len(chunk)
        if size > limit:
            raise DecodedTooLarge(f"answer decodes to more than {limit} bytes")
        out.append(chunk)
        if decompressor.is_finished():
            return b"".join(out)
        if not chunk and decompressor.can_accept_more_data():
            raise ValueError("truncated brotli answer")


def _zstd(body: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    decompressor = zstd.ZstdDecompressor()
    data = body
    while True:
        chunk = decompressor.decompress(data, SLICE)
        data = b""
        size += len(chunk)
        if size > limit:
            raise DecodedTooLarge(f"answer decodes to more than {limit} bytes")
        out.append(chunk)
        if decompressor.eof:
            if not decompressor.unused_data:
                return b"".join(out)
            data = decompressor.unused_data  # a body may hold several frames
            decompressor = zstd.ZstdDecompressor()
        elif decompressor.needs_input:
            raise ValueError("truncated zstd answer")


def decode(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` decoded from its Content-Encoding, at most `limit` bytes. Raises ValueError when it
    is corrupt, in an unknown encoding, or larger than `limit` (DecodedTooLarge)."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return _zlib(body, 47, limit)  # 32 + 15: gzip or zlib header, detected
        if encoding == "deflate":
            return _deflate(body, limit)
        if encoding == "br":
            return _brotli(body, limit)
        if encoding == "zstd":
            return _zstd(body, limit)
    except DecodedTooLarge:
        raise
    except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
        raise ValueError(f"{encoding} answer is corrupt: {exc}") from None
    raise ValueError(f"unsupported content-encoding {encoding!r}")
