"""`file:path` values in rule files (PEM keys, CA bundles), read safely (SPEC 18).

Only a regular file inside the rules directory, of at most MAX_FILE_REF_BYTES, is read. Anything else
is a rule problem, never a hang or an unbounded read: a FIFO would block the reader until someone
writes to it, `/dev/zero` never ends, and a path outside the directory could name any local file
(the CA key) for a rule document that came from a remote feed to send upstream."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_FILE_REF_BYTES = 1024 * 1024  # PEM keys and CA bundles are a few KiB; 1 MiB is plenty


def read_file_ref(reference: str, base_dir: str) -> str:
    """The text of `reference` (the part after `file:`), relative to `base_dir`. Raises ValueError
    with a sentence for the rule problem."""
    if "\0" in reference:
        raise ValueError("file: path must not contain a NUL character")
    resolved = _inside(reference, Path(base_dir).resolve())
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ValueError(f"cannot read file:{reference}: {exc.strerror}") from None
    try:
        content = _read_regular(fd, reference)
    except OSError as exc:
        raise ValueError(f"cannot read file:{reference}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"file:{reference} is not UTF-8 text") from None
    if "\0" in text:
        raise ValueError(f"file:{reference} holds a NUL character")
    return text


def _inside(reference: str, base: Path) -> Path:
    """The file a reference names, resolved, when it lies under `base`."""
    path = Path(reference).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ValueError(f"cannot read file:{reference}: {getattr(exc, 'strerror', None) or exc}") from None
    if not resolved.is_relative_to(base):
        raise ValueError(f"file:{reference} is outside the rules directory (only files under it are read)")
    return resolved


def _read_regular(fd: int, reference: str) -> bytes:
    """The bytes of an open regular file of at most MAX_FILE_REF_BYTES (a file growing while read
    is caught too: at most one chunk past the limit is read)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"file:{reference} is not a regular file")
    if info.st_size > MAX_FILE_REF_BYTES:
        raise ValueError(f"file:{reference} is larger than {MAX_FILE_REF_BYTES // 1024} KiB")
    data = os.read(fd, MAX_FILE_REF_BYTES + 1)
    chunks = [data]
    while data and sum(map(len, chunks)) <= MAX_FILE_REF_BYTES:
        data = os.read(fd, MAX_FILE_REF_BYTES + 1)
        chunks.append(data)
    content = b"".join(chunks)
    if len(content) > MAX_FILE_REF_BYTES:
        raise ValueError(f"file:{reference} is larger than {MAX_FILE_REF_BYTES // 1024} KiB")
    return content
