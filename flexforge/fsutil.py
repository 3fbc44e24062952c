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
def staging(path: Path, *, durable: bool = True) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file beside `path` to fill, for `install()` to rename into place later; removed
    if the block fails. `durable` fsyncs it (for what must survive a power cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            yield f, Path(tmp)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(staged: Path, path: Path, *, durable: bool = True) -> None:
    """Rename a staged file over `path`: readers and crashes see the old bytes or the new."""
    os.replace(staged, path)
    if durable:
        fsync_dir(path.parent)


@contextmanager
def replacing(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to fill that replaces `path` only when the block succeeds."""
    with staging(path, durable=durable) as (f, staged):
        yield f
    install(staged, path, durable=durable)


def stage_bytes(dest: Path, data: bytes) -> Path:
    """`data` durably staged beside `dest`, for `install()`."""
    with staging(dest) as (out, staged):
        out.write(data)
    return staged


def stage_copy(src: Path, dest: Path) -> Path:
    """A durable copy of `src` staged beside `dest`, for `install()`."""
    with staging(dest) as (out, staged), src.open("rb") as inp:
        shutil.copyfileobj(inp, out, CHUNK)
    return staged


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    with replacing(path, durable=durable) as f:
        f.write(data)


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


def fsync_dir(folder: Path) -> None:
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


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PROBE_PREFIX = ".probe."


def probe_writable(folder: Path) -> None:
    """Create, fill, fsync and remove a small file in `folder` (made if missing); OSError when
    that fails: a full disk (ENOSPC), a read-only mount (EROFS), no permission (EACCES)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder, {"probe"})  # what a kill mid-probe left, named by us
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=PROBE_PREFIX, suffix=".tmp")
    try:
        # One block, more than a journal entry takes: a disk with a few bytes free fails here.
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
