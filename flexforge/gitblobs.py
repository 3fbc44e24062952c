"""Digests a fresh clone takes from git instead of hashing: a file that git's index says is clean
has the blob id the index holds, and the lock recorded which sha256 goes with that blob id.

A CI runner starts from a fresh clone with no stat cache: without this, its first plan reads and
hashes every reference and output (1,000 assets: 200 MB). git already knows each tracked file's
blob id (a digest of its bytes) and which files changed since checkout; each lock entry records
`git_blobs`, the blob id and sha256 of its output and reference files, computed here from the
bytes themselves. So a file clean in the index whose blob id the lock pairs with a sha256 is not
read, only its header if validation asks for one.

What it trusts (docs/security.md): git's index is local state git wrote; the pairs come from the
lock, which is committed, so untrusted like the rest of it. A lying pair can make a plan call an
output up to date or a reference unchanged, which a lying lock entry could already do. It can
never make flexforge pay or cache an image under a wrong key: every reference's bytes are hashed
again and checked before they are sent (engine._request). A digest taken from git is never
written to the stat cache, so a pair stops counting the moment the lock stops saying it.

Files git filters (LFS, end-of-line conversion) never match: their blob id is of other bytes than
the working tree's, which are what the recorded blob id was computed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from flexforge.fsutil import CHUNK, open_regular

if TYPE_CHECKING:
    from flexforge.lockfile import Lock
    from flexforge.planner import Step

Stat = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns: reads.Stamp
GIT_TIMEOUT = 10.0  # seconds: past that, hashing is cheaper than waiting


def blob_id(data: bytes | memoryview) -> str:
    """git's id of a blob holding `data` (SHA-1 object format)."""
    digest = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    digest.update(data)
    return digest.hexdigest()


def file_ids(path: str | Path, *, follow: bool = True) -> tuple[str, str]:
    """(sha256, git blob id) of the plain file at `path`, in one pass. Raises OSError."""
    fd = open_regular(path, follow=follow)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        while block := f.read(CHUNK):
            sha256.update(block)
            sha1.update(block)
            size -= len(block)
    if size != 0:  # changed while read: the two digests may be of different bytes
        raise OSError(f"{path} changed while it was read")
    return sha256.hexdigest(), sha1.hexdigest()


class _Known:
    """What this process knows: the lock's pairs, and git's index for the project."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.root: str | None = None
        self.lock_path: Path | None = None
        self.ready = threading.Event()  # pairs and clean are final
        self.loading = False  # a thread (or a caller) is reading them
        self.lock: Lock | None = None  # as read for its pairs, handed on to take_lock()
        self.pairs: dict[str, str] = {}  # blob id -> sha256, from the lock
        self.clean: dict[str, tuple[str, Stat]] = {}  # absolute path -> git's blob id and stat
        self.blob_of: dict[str, str] = {}  # sha256 -> blob id, of bytes seen or vouched for


_known = _Known()


def configure(root: Path, lock_path: Path, *, early: bool = False) -> None:
    """The project this process plans. With `early` (a cold start: no stat cache), git's index
    and the lock are read now, on a thread, while the manifest is parsed; else only when a
    digest is first asked for (a warm plan may ask for none)."""
    global _known
    _known = k = _Known()
    k.root = os.path.realpath(root)
    k.lock_path = lock_path
    if early:
        k.loading = True
        threading.Thread(target=_load, args=(k,), name="flexforge-gitblobs", daemon=True).start()


def vouching() -> bool:
    """Whether git's index and the lock may vouch for files here (a git work tree whose lock
    records blob ids): then most files of a fresh clone need no hashing."""
    k = _ready()
    return k is not None and bool(k.clean) and bool(k.pairs)


def known(path: str, stamp: Stat) -> str | None:
    """The sha256 of the file at absolute `path` (a realpath), now with `stamp` (inode, size,
    mtime_ns, ctime_ns), if git's index and the lock vouch for it; else None: hash it."""
    k = _ready()
    if k is None:
        return None
    listed = k.clean.get(path)
    # The stat git recorded with the blob id is the file's now: the same bytes. git keeps the
    # inode and size in 32 bits, and compares them so.
    if listed is None:
        return None
    ino, size, mtime, ctime = stamp
    if listed[1] != (ino & _LOW32, size & _LOW32, mtime, ctime):
        return None
    blob = listed[0]
    sha256 = k.pairs.get(blob)
    if sha256 is not None:
        k.blob_of.setdefault(sha256, blob)
    return sha256


def _ready() -> _Known | None:
    """What this process knows, once read (now, unless a thread is at it); None when no project
    was configured."""
    k = _known
    if k.root is None:
        return None
    if not k.ready.is_set():
        with k.mutex:
            first = not k.loading
            k.loading = True
        if first:
            _load(k)
        k.ready.wait()
    return k


def take_lock(path: Path) -> Lock | None:
    """The lock at `path` as read here for its pairs, if it is still that file: read once."""
    from flexforge.lockfile import stamp

    k = _known
    if k.lock_path != path or not k.ready.is_set() or k.lock is None:
        return None
    lock, k.lock = k.lock, None
    return lock if lock._stamp is not None and stamp(path) == lock._stamp else None


def note(sha256: str, blob: str) -> None:
    """Remember that `blob` is the git blob id of the bytes whose sha256 is `sha256` (both
    computed from those bytes): lock entries written later record the pair."""
    _known.blob_of[sha256] = blob


def pairs_for(digests: Iterable[str | None]) -> dict[str, str]:
    """The known blob id -> sha256 pairs for `digests` (an entry's output and references)."""
    blob_of = _known.blob_of
    found: dict[str, str] = {}
    for sha256 in digests:
        if sha256 is not None and (blob := blob_of.get(sha256)) is not None:
            found[blob] = sha256
    return found


def learn(entries: Mapping[str, Mapping[str, str] | None]) -> None:
    """Pairs recorded in a lock (this one's, or a past one's an image is restored from)."""
    blob_of = _known.blob_of
    for pairs in entries.values():
        for blob, sha256 in (pairs or {}).items():
            blob_of.setdefault(sha256, blob)


def _load(k: _Known) -> None:
    """Read the lock's pairs, and ask git which tracked files under the root it vouches for."""
    try:
        from flexforge.lockfile import read_lock

        assert k.root is not None and k.lock_path is not None
        lock = read_lock(k.lock_path)
        k.lock = lock
        pairs = {blob: sha for e in lock.entries.values() for blob, sha in (e.git_blobs or {}).items()}
        if pairs:  # else nothing could match: spare git
            k.clean = _index_entries(k.root)
            k.pairs = pairs
    except Exception:  # a bad lock is reported when the command reads it for real
        pass
    finally:
        k.ready.set()


def _index_entries(root: str) -> dict[str, tuple[str, Stat]]:
    """Absolute path -> (blob id, the stat git recorded) of every plain file under `root` in
    git's index whose stat git took after the file was last written (so the stat vouches for
    the blob); empty outside a git work tree, when git fails, or for an index this module does
    not read (a split index, a SHA-256 repository): then every file is hashed.

    Not `git diff-files`: in a fresh clone most files were written in the second git wrote its
    index, which git (comparing seconds) cannot tell from a later edit, so it hashes them all
    again with its collision-detecting SHA-1, slower than hashing them here. The stat data
    compared in nanoseconds (`known`) says the same for a file written before the index. Nor
    `git ls-files --debug`: its text takes longer to read than the index itself, whose format
    (gitformat-index(5)) has been stable for fifteen years."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        where = subprocess.run(
            [*_REV_PARSE, "--git-path", "index", "--show-prefix", "--show-object-format"],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=GIT_TIMEOUT,
        )
        lines = os.fsdecode(where.stdout).split("\n")
        if where.returncode != 0 or len(lines) < 3 or lines[2] != "sha1":
            return {}
        # Never blocking on a FIFO, nor reading a device: git itself gave up on those in time.
        with os.fdopen(open_regular(lines[0], follow=True), "rb") as f:
            written = os.fstat(f.fileno()).st_mtime_ns
            data = f.read(MAX_INDEX_BYTES + 1)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if len(data) > MAX_INDEX_BYTES:
        return {}
    prefix = os.fsencode(lines[1])
    entries: dict[str, tuple[str, Stat]] = {}
    for rel, blob, stat in read_index(data, written):
        if rel.startswith(prefix):
            try:
                entries[os.path.join(root, rel[len(prefix) :].decode())] = (blob, stat)
            except UnicodeDecodeError:
                continue
    return entries


_REV_PARSE = ("git", "rev-parse", "--path-format=absolute")
MAX_PATH_BYTES = 4096  # PATH_MAX: a longer name in an index is not one git wrote
MAX_INDEX_BYTES = 512 * 2**20
_LOW32 = 2**32 - 1
# ctime s, ns, mtime s, ns, dev, ino, mode, uid, gid, size (all 32 bits), blob id, flags
_ENTRY = struct.Struct(">10I20sH")
_PLAIN = (0o100644, 0o100755)
_ASSUME_VALID, _EXTENDED, _STAGE = 0x8000, 0x4000, 0x3000
_SKIP_WORKTREE, _INTENT_TO_ADD = 0x4000, 0x2000
_EMPTY_BLOB = bytes.fromhex("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")  # git's only size-0 blob


def read_index(data: bytes, written: int) -> list[tuple[bytes, str, Stat]]:
    """(path from the work tree's top, blob id, stat) of each plain file at stage 0 that git's
    index (`data`, last written at `written` ns) vouches for: not assume-unchanged,
    skip-worktree or intent-to-add, and not written in the clock tick the index was (git's
    "racy" entries: the same stat could follow another write in that tick). None at all from
    an index this reader does not know (a split index, a damaged file)."""
    if len(data) < 32 or data[:4] != b"DIRC":
        return []
    if hashlib.sha1(data[:-20], usedforsecurity=False).digest() not in (data[-20:], bytes(20)):
        return []  # torn or damaged (twenty zeros: written with index.skipHash)
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3, 4):
        return []
    found: list[tuple[bytes, str, Stat]] = []
    offset, name, end = 12, b"", len(data) - 20
    unpack = _ENTRY.unpack_from
    try:
        for _ in range(count):
            cs, cn, ms, mn, _dev, ino, mode, _uid, _gid, size, blob, flags = unpack(data, offset)
            start = offset + _ENTRY.size
            extended = 0
            if flags & _EXTENDED:
                (extended,) = struct.unpack_from(">H", data, start)
                start += 2
            if version == 4:  # the path is the last one's less N bytes, plus these
                strip, start = _varint(data, start)
                stop = data.index(b"\0", start)
                name = name[: len(name) - strip] + data[start:stop]
                offset = stop + 1
                if len(name) > MAX_PATH_BYTES:  # grown by every entry: git writes none so long
                    return []
            else:  # NUL-padded to a multiple of eight bytes
                stop = data.index(b"\0", start)
                name = data[start:stop]
                offset += (stop - offset + 8) & ~7
            if offset > end:
                return []
            mtime = ms * 10**9 + mn
            if (
                mode in _PLAIN
                and not flags & (_ASSUME_VALID | _STAGE)
                and not extended & (_SKIP_WORKTREE | _INTENT_TO_ADD)
                and mtime < written
                and (size or blob == _EMPTY_BLOB)  # size 0: smudged by git, "racily clean"
            ):
                found.append((name, blob.hex(), (ino, size, mtime, cs * 10**9 + cn)))
        while offset + 8 <= end:  # extensions: a split index keeps its entries elsewhere
            if data[offset : offset + 4] == b"link":
                return []
            offset += 8 + struct.unpack_from(">I", data, offset + 4)[0]
    except (struct.error, ValueError, IndexError):
        return []
    return found


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """git's offset varint (varint.c) at `at`: (value, where the next field starts)."""
    byte = data[at]
    value = byte & 0x7F
    while byte & 0x80:
        at += 1
        byte = data[at]
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, at + 1


def backfill(lock: Lock, steps: Sequence[Step], root: Path) -> int:
    """Complete the `git_blobs` of up-to-date assets' lock entries, read from the files (one pass
    each, on all cores): a lock written before git_blobs existed, or an entry recorded while a
    reference's blob id was unknown (restored on a machine that had hashed it), gains them at the
    next build, so that fresh clones from then on hash nothing. Returns how many entries changed;
    outside a git work tree, none (no clone would use them)."""
    from flexforge.planner import NONE

    todo = [
        s
        for s in steps
        if s.action == NONE
        and s.key is not None
        and s.asset.written
        and (entry := lock.entries.get(s.asset.id)) is not None
        and entry.out == s.asset.out
        and not {entry.sha256, *s.key.files} <= set((entry.git_blobs or {}).values())
    ]
    if not todo or not _in_work_tree(root):
        return 0
    wanted: dict[str, str] = {}  # root-relative path -> the sha256 it must have
    for step in todo:
        wanted[step.asset.out] = lock.entries[step.asset.id].sha256
        file_refs = [r for r in step.asset.references if r not in step.asset.asset_refs]
        wanted.update(zip(file_refs, step.key.files, strict=True))  # type: ignore[union-attr]
    paths = sorted(wanted)

    def ids(rel: str) -> tuple[str, str] | None:
        try:  # a reference may be a link inside the root (validation confined it)
            return file_ids(root / rel)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        found = dict(zip(paths, pool.map(ids, paths), strict=True))
    changed = 0
    for step in todo:
        entry = lock.entries[step.asset.id]
        file_refs = [r for r in step.asset.references if r not in step.asset.asset_refs]
        pairs: dict[str, str] = {}
        for rel in [step.asset.out, *file_refs]:
            got = found.get(rel)
            if got is None or got[0] != wanted[rel]:
                break  # changed since the plan, or a link: left for another build
            pairs[got[1]] = got[0]
        else:
            lock.set_entry(step.asset.id, dataclasses.replace(entry, git_blobs=pairs))
            changed += 1
    return changed


def _in_work_tree(root: Path) -> bool:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"],
            cwd=root,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == b"true"
