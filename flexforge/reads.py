"""Input files read once per process: sha256 and first bytes in one pass, on a small thread pool.

A cold plan reads every reference and output (1,000 assets: 2,000 files, 200 MB). hashlib
releases the GIL while it hashes, so a pool hashes on every core while the main thread goes on
validating and planning; and a reference's header is checked from the bytes read for its digest
instead of opening it again. A digest is reused only for a file whose stamp (inode, size, mtime,
ctime) is the one it was read under, as `Store`'s stat cache does across processes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypedDict

from flexforge import gitblobs
from flexforge.fsutil import CHUNK, open_regular

HEAD = 1024  # enough for a PNG's header chunks; a longer header is read by Pillow itself
TAIL = 16  # a PNG's IEND chunk, the end check_reference looks at
WORKERS = max(1, min(4, os.cpu_count() or 1))
BATCHES = 4  # per worker: small enough to even out, few enough to cost nothing

Stamp = tuple[int, int, int, int]


class Options(TypedDict, total=False):
    ends: bool
    max_size: int | None
    size: int | None


@dataclass(frozen=True, slots=True)
class FileRead:
    stamp: Stamp  # noop.file_stamp's (inode, size, mtime_ns, ctime_ns), taken before reading
    sha256: str
    head: bytes = b""  # the first HEAD bytes, when asked for
    tail: bytes = b""  # the last TAIL bytes, when asked for
    from_git: bool = False  # the digest is git's index and the lock's word, not a hash (gitblobs)

    @property
    def size(self) -> int:
        return self.stamp[1]


# Every read this process made, by path (None: it failed): a later digest() of the same unchanged
# file takes it instead of reading the file again.
_reads: dict[str, FileRead | None] = {}


_local = threading.local()


def _buffer() -> memoryview:
    """This thread's read buffer: a fresh one per file costs more (page faults) than the read."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(CHUNK))
    return buffer


class NotVouched(Exception):
    """read_file(hashing=False) met a file git's index does not vouch for."""


def read_file(
    path: str,
    *,
    ends: bool = False,
    max_size: int | None = None,
    size: int | None = None,
    hashing: bool = True,
) -> FileRead | None:
    """One pass over the plain file at `path` (a link to one is followed: callers confine it):
    its digest, and with `ends` its first and last bytes. None, unread, when it is larger than
    `max_size` or not `size` bytes long. Raises OSError (fsutil.NotRegularFile for a FIFO...),
    or NotVouched without `hashing` when the digest would have to be computed."""
    if not ends:  # a digest git's index may vouch for without opening the file
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            if _refused(st.st_size, max_size, size):
                return None
            stamp = _stamp(st)
            vouched = gitblobs.known(path, stamp)
            if vouched is not None:
                return FileRead(stamp, vouched, from_git=True)
            if not hashing:
                raise NotVouched(path)
    fd = open_regular(path, follow=True)
    try:
        st = os.fstat(fd)
        if _refused(st.st_size, max_size, size):
            return None
        stamp = _stamp(st)
        vouched = gitblobs.known(path, stamp)
        if vouched is not None:
            head = tail = b""
            if ends:
                head = os.pread(fd, HEAD, 0)
                tail = os.pread(fd, TAIL, max(0, st.st_size - TAIL))
            return FileRead(stamp, vouched, head, tail, from_git=True)
        if not hashing:
            raise NotVouched(path)
        digest = hashlib.sha256()
        buffer = _buffer()
        head = last = b""
        with os.fdopen(fd, "rb", closefd=False) as f:
            while n := f.readinto(buffer):
                block = buffer[:n]
                digest.update(block)
                if ends:
                    head = head or bytes(block[:HEAD])
                    last = (last + bytes(block[-TAIL:]))[-TAIL:]
    finally:
        os.close(fd)
    tail = last if ends else b""
    return FileRead(stamp, digest.hexdigest(), head, tail)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refused(actual: int, max_size: int | None, size: int | None) -> bool:
    return (max_size is not None and actual > max_size) or (size is not None and actual != size)


def read_all(jobs: Sequence[tuple[str, Options]]) -> list[FileRead | None]:
    """Read every (path, read_file options) on all cores at once, and wait for them all; None for
    a file that could not be read. The caller waits rather than working meanwhile: a thread that
    must win the GIL back from a busy main thread after each read and each hash would wait up
    to sys.getswitchinterval() (5 ms) every time. Files go to the workers in a few batches, not
    one by one: a future per file costs a third of what hashing it does.

    Files git's index vouches for (most of a fresh clone's) are taken here first: with nothing
    to hash, workers would only pass the GIL around, at twice the cost."""
    done: list[FileRead | None] = [None] * len(jobs)
    todo = list(range(len(jobs)))
    if jobs and gitblobs.vouching():
        todo = []
        for i, (path, options) in enumerate(jobs):
            try:
                done[i] = read_file(path, **options, hashing=False)
            except NotVouched:
                todo.append(i)
            except (OSError, ValueError):
                pass  # the caller asks again the slow way, which says why
    rest = [jobs[i] for i in todo]
    if len(rest) < 2 * WORKERS or WORKERS == 1:
        read = _read_batch(rest)
    else:
        count = WORKERS * BATCHES
        executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="flexforge-read")
        try:
            # Dealt round-robin, so that each batch gets its share of large and small files.
            batches = [executor.submit(_read_batch, rest[i::count]) for i in range(count)]
            parts = [batch.result() for batch in batches]
        finally:
            # On the way out of an error or Ctrl-C, batches not yet begun are dropped.
            executor.shutdown(wait=True, cancel_futures=True)
        read = [None] * len(rest)
        for i, part in enumerate(parts):
            read[i::count] = part
    for i, got in zip(todo, read, strict=True):
        done[i] = got
    for (path, _), got in zip(jobs, done, strict=True):
        _reads[path] = got
    return done


def _read_batch(jobs: Sequence[tuple[str, Options]]) -> list[FileRead | None]:
    done: list[FileRead | None] = []
    for path, options in jobs:
        try:
            done.append(read_file(path, **options))
        except (OSError, ValueError):
            done.append(None)  # the caller asks again the slow way, which says why
    return done


def started(path: str) -> bool:
    """Whether this process has read `path` already (digest() then checks it is unchanged)."""
    return path in _reads


def digest(path: str, stamp: list[int]) -> FileRead | None:
    """What this process read for `path` while it had exactly `stamp`, if anything."""
    read = _reads.get(path)
    if read is None or list(read.stamp) != stamp:
        return None
    return read
