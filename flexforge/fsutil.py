"""Durable file writes and streaming digests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
TEMP_MARK = ".ff-"  # in every temp file's name, so that only flexforge's own are ever removed
# The random part: 8 characters from [a-z0-9_] (hex now; mkstemp's alphabet in older temps).
_TEMP_NAME = re.compile(r"^\.(.+)\.ff-[a-z0-9_]{8}\.tmp\Z")


@contextmanager
def staging(path: Path, *, durable: bool = True) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file beside `path` to fill, for `install()` to rename into place later; removed
    if the block fails. `durable` fsyncs it (for what must survive a power cut)."""
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Created, never opened: O_EXCL refuses anything already there, a link included.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def _new_temp(path: Path) -> tuple[int, Path]:
    """A new file beside `path` named `.NAME.ff-XXXXXXXX.tmp`, open for writing. Its mode is
    0666 less the umask (mkstemp's 0600 would need a chmod: outputs are committed and shared);
    one syscall, where mkstemp and a chmod took three and restoring a thousand files felt it."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


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


def overwrite(path: Path, data: bytes, *, folder: int | None = None) -> None:
    """`data` written over the plain file at `path` in place, without fsync, the file made if
    missing (its folders too). Not atomic: a kill leaves the file torn, so callers record their
    intent first (flexforge/outputs.py). Over an existing file of the same inode this is a copy
    into the page cache: no new inode, no directory entry, no freed blocks, five to ten times
    cheaper than a new file and a rename. Never through a final link (O_NOFOLLOW, and the inode
    checked against lstat), never into a FIFO or device; a file with other hard links is replaced
    by a new one, so that the other names keep their bytes (as git's checkout does). With
    `folder` (a descriptor from `open_folder` on `path`'s folder) the file is named relative to
    it: a folder on the way swapped for a link since then changes nothing."""
    name: str | Path = path.name if folder is not None else path
    try:
        before: os.stat_result | None = os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        before = None
    if before is not None:
        _refuse_special(before.st_mode, path)
        if before.st_nlink > 1:
            os.unlink(name, dir_fd=folder)
            before = None
    flags = os.O_WRONLY | os.O_CLOEXEC | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
    if before is None:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        try:
            fd = os.open(name, flags, 0o666, dir_fd=folder)
        except FileNotFoundError:
            if before is not None or folder is not None:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(name, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put there since the lstat
            raise NotRegularFile(exc.errno, "is a symbolic link", str(path)) from None
        raise
    try:
        now = os.fstat(fd)
        if before is not None and (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise NotRegularFile(errno.EINVAL, "was replaced while being written", str(path))
        _refuse_special(now.st_mode, path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if now.st_size > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC


def open_folder(root: Path, parts: tuple[str, ...]) -> int | None:
    """A descriptor on the folder `root/parts...`, walked from `root` one component at a time
    without following any link (made where missing), for `overwrite(folder=...)`; None where
    the system cannot name files relative to a folder (then paths are used). NotRegularFile
    when a component is a link or not a folder."""
    if os.open not in os.supports_dir_fd or not _NOFOLLOW:
        return None
    fd = os.open(root, _FOLDER)
    try:
        for part in parts:
            try:
                inner = os.open(part, _FOLDER | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                inner = os.open(part, _FOLDER | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotRegularFile(exc.errno, "is a symbolic link or not a folder", part) from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_special(mode: int, path: Path) -> None:
    if stat.S_ISLNK(mode):
        raise NotRegularFile(errno.ELOOP, "is a symbolic link", str(path))
    if not stat.S_ISREG(mode):
        raise NotRegularFile(errno.EINVAL, "is not a plain file", str(path))


def is_temp(path: Path) -> bool:
    """Whether `path` is one of flexforge's temp files (only those are ever removed unasked)."""
    return _TEMP_NAME.match(path.name) is not None


def stage_bytes(dest: Path, data: bytes, *, durable: bool = True) -> Path:
    """`data` staged beside `dest` (fsynced if `durable`), for `install()`."""
    with staging(dest, durable=durable) as (out, staged):
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
    """Delete what a killed `replacing()` left beside the files `names` in `folder`: only names
    flexforge makes (`.NAME.ff-XXXXXXXX.tmp`), never a user's own `.NAME.backup.tmp`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is not None and match.group(1) in names and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)


def sync_files(paths: list[Path]) -> None:
    """Make the bytes of files written without fsync durable, at once: one `syncfs` per file
    system on Linux (a thousand restored outputs cost one sync, not a thousand journal commits),
    else an fsync each. A file that is gone is skipped: its rename will fail and say so."""
    syncfs = _syncfs()
    done: set[int] = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        except OSError:
            continue
        try:
            device = os.fstat(fd).st_dev
            if syncfs is not None and device in done:
                continue
            if syncfs is None or syncfs(fd) != 0:
                os.fsync(fd)  # no syncfs here, or it failed: this file alone, surely
            done.add(device)
        finally:
            os.close(fd)


def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) where there is one (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        call: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    return call


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


class NotRegularFile(OSError):
    """A path that is a link, folder, FIFO, device or socket where a plain file belongs."""


class FileTooLarge(OSError):
    """A file larger than its reader allows (a link to /dev/zero, a planted multi-GB file)."""


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_regular(path: Path | str, *, follow: bool = False) -> int:
    """A descriptor on `path` only if it is a plain file, never blocking on a FIFO (O_NONBLOCK,
    then fstat), and never through a final link unless `follow`. Raises FileNotFoundError,
    NotRegularFile."""
    try:
        fd = os.open(path, _READ_FLAGS | (0 if follow else _NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise NotRegularFile(exc.errno, "is a symbolic link", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "folder" if stat.S_ISDIR(mode) else "special file (FIFO, device or socket)"
            raise NotRegularFile(errno.EINVAL, f"is a {kind}, not a file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int, *, follow: bool = False) -> bytes:
    """The bytes of the plain file at `path`, at most `limit` of them (else FileTooLarge)."""
    fd = open_regular(path, follow=follow)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"is larger than {limit} bytes", str(path))
    return data


def real_folders(base: Path, rel_parts: tuple[str, ...]) -> Path:
    """`base/rel_parts...`, refusing any existing component that is a link or not a folder:
    inside flexforge's state folder a link would send a read or write anywhere on the disk."""
    path = base
    for part in rel_parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
            raise NotRegularFile(errno.ENOTDIR, f"is {what}", str(path))
    return path


def probe_writable(folder: Path) -> None:
    """Create, fill, fsync and remove a small file in `folder` (made if missing); OSError when
    that fails: a full disk (ENOSPC), a read-only mount (EROFS), no permission (EACCES)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder, {"probe"})  # what a kill mid-probe left, named by us
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".probe{TEMP_MARK}", suffix=".tmp")
    try:
        # One block, more than a journal entry takes: a disk with a few bytes free fails here.
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def sha256_file(path: Path | str) -> str:
    """The digest of a plain file (a link to one is followed: callers confine it first)."""
    fd = open_regular(path, follow=True)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
