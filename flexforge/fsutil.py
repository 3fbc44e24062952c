"""Durable file writes and streaming digests."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def _file_mode() -> int:
    # mkstemp makes 0600 files; outputs are committed and shared, so honour the umask instead.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextmanager
def replacing(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to fill that replaces `path` only when the block succeeds: it is written beside
    `path` and renamed into place, so readers and crashes see the old bytes or the new, never
    half. `durable` also fsyncs the file and its folder (for what must survive a power cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    with replacing(path, durable=durable) as f:
        f.write(data)


def atomic_copy(src: Path, dest: Path) -> None:
    with replacing(dest) as out, src.open("rb") as inp:
        shutil.copyfileobj(inp, out, CHUNK)


def remove_stale_temps(folder: Path, names: set[str]) -> None:
    """Delete what a killed `replacing()` left beside the files `names` in `folder`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp") and name[1:-4].rpartition(".")[0] in names:
            Path(entry.path).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
