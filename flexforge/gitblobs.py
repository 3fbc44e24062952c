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
import re
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


def known(path: str, stamp: Stat) -> str | None:
    """The sha256 of the file at absolute `path` (a realpath), now with `stamp` (inode, size,
    mtime_ns, ctime_ns), if git's index and the lock vouch for it; else None: hash it."""
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
    listed = k.clean.get(path)
    # The stat git recorded with the blob id is the file's now: the same bytes.
    if listed is None or listed[1] != stamp:
        return None
    blob = listed[0]
    sha256 = k.pairs.get(blob)
    if sha256 is not None:
        k.blob_of.setdefault(sha256, blob)
    return sha256


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


# `git ls-files -z -s -t --debug`: each file's tag, mode, blob id, stage and path, then the stat
# data git recorded for it when it last found the file's bytes to be that blob.
_ENTRY = re.compile(
    rb"(?P<tag>\S+) (?P<mode>\d+) (?P<blob>[0-9a-f]+) (?P<stage>\d+)\t(?P<path>[^\0]*)\0"
    rb"  ctime: (?P<cs>\d+):(?P<cn>\d+)\n  mtime: (?P<ms>\d+):(?P<mn>\d+)\n"
    rb"  dev: \d+\tino: (?P<ino>\d+)\n  uid: \d+\tgid: \d+\n  size: (?P<size>\d+)\tflags: [0-9a-f]+\n"
)


def _index_entries(root: str) -> dict[str, tuple[str, Stat]]:
    """Absolute path -> (blob id, the stat git recorded) of every plain file under `root` in
    git's index whose stat git took after the file was last written (so the stat vouches for
    the blob); empty outside a git work tree or when git fails.

    Not `git diff-files`: in a fresh clone most files were written in the second git wrote its
    index, which git (comparing seconds) cannot tell from a later edit, so it hashes them all
    again with its collision-detecting SHA-1, slower than hashing them here. The stat data
    compared in nanoseconds (`known`) says the same for a file written before the index."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        where = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-path", "index"],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=GIT_TIMEOUT,
        )
        index = os.fsdecode(where.stdout.strip())
        if where.returncode != 0 or not index:
            return {}
        before = os.stat(index).st_mtime_ns
        # -t tags each file: "H" is a plain tracked file; assume-unchanged ("h") and
        # skip-worktree ("S") files may differ from the index without git knowing.
        listed = subprocess.run(
            ["git", "ls-files", "-z", "-s", "-t", "--debug", "--", "."],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=GIT_TIMEOUT,
        )
        if listed.returncode != 0 or os.stat(index).st_mtime_ns != before:
            return {}  # rewritten meanwhile: the listing may mix two indexes
    except (OSError, subprocess.TimeoutExpired):
        return {}
    entries: dict[str, tuple[str, Stat]] = {}
    for m in _ENTRY.finditer(listed.stdout):
        if m["tag"] != b"H" or m["stage"] != b"0" or m["mode"] not in (b"100644", b"100755"):
            continue
        mtime = int(m["ms"]) * 10**9 + int(m["mn"])
        # Written in the clock tick git wrote the index in (or later): the same stat could follow
        # another write in that tick, so git itself ("racy" entries) and this module hash it.
        if mtime >= before:
            continue
        try:
            rel = os.fsdecode(m["path"])
        except UnicodeDecodeError:
            continue
        stat = (int(m["ino"]), int(m["size"]), mtime, int(m["cs"]) * 10**9 + int(m["cn"]))
        entries[os.path.join(root, rel)] = (m["blob"].decode("ascii"), stat)
    return entries


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
