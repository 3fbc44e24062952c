"""Git history as a free object store: every version of the lock reachable from HEAD, indexed by
content key, and the bytes of an old output read back with `git cat-file --batch`.

The index is built once per HEAD and kept in the user's cache folder (extended, not rebuilt,
when HEAD moves forward), so a plan that needs no history never starts git and one that does
pays for the history only once. No git, not a repository, a shallow clone: less history.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from flexforge.fsutil import atomic_write, sha256_bytes
from flexforge.lockfile import Lock, parse_entries
from flexforge.sources import GIT, Source

INDEX_VERSION = 3  # 2: rows only for files their commit holds; 3: the project folder moved
MAX_LOCK_BYTES = 64 * 2**20  # an old lock bigger than this is skipped, not read
# Distinct lock versions read when an index is first built, newest first: a long history must not
# make one plan read gigabytes of old JSON. What is older simply is not a source.
MAX_VERSIONS = 2000
# And at most this many bytes of them: two thousand 64 MiB versions (a hostile history; they
# compress to little in git) took minutes and gigabytes of memory per thousand MiB parsed.
MAX_HISTORY_BYTES = 128 * 2**20
# Moves of the project folder (`git mv site web`) followed back through history.
MAX_MOVES = 16
# A repository is untrusted (docs/security.md): no prompt, no lock taken, no replace refs bending
# what an object id means, and no fsmonitor hook a planted .git/config could name.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "LC_ALL": "C",
}
GIT_COMMAND = ("git", "-c", "core.fsmonitor=false")
LIST_TREE_FROM = 8  # wanted files in one commit from which one `git ls-tree` names them all
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")  # SHA-1 or SHA-256 repositories
# Each row: sha256, size, out, commit, seed, task_id, cost_usd, provider, asset id.
Row = list[Any]


class History:
    """The lock's history in one git repository, seen from one project folder inside it."""

    def __init__(
        self,
        toplevel: Path,
        prefix: str,
        lock_rel: str,
        head: str,
        cache: Path | None,
        current: Lock | None = None,
        merging: tuple[str, ...] = (),
    ) -> None:
        self.toplevel = toplevel
        self._current = current  # the working lock: a version with its bytes is not parsed again
        self.prefix = prefix  # the project folder, relative to the repository's top
        self.lock_rel = lock_rel
        self.head = head
        # A merge, rebase or cherry-pick in progress: the commits it brings in are history too
        # (a lock conflict resolved with `--ours` before committing names none of their images).
        self.tips = (head, *merging)
        # A shallow clone's boundary (a digest of git's `shallow` file; "" when complete): made
        # deeper, the same HEAD has more history, so an index cached for it is built again.
        self.shallow = ""
        self._cache = cache
        # Commit -> the project folder then, for lock versions committed before the folder was
        # moved (`git mv site web`): their outputs are read from where they were.
        self._moved: dict[str, str] = {}
        self._index: dict[str, list[Row]] | None = None
        self._by_sha: dict[str, list[Row]] | None = None  # for alternates, built on first need
        self._outputs: set[tuple[str, str]] | None = None
        # sha256 -> (key, seed), asset id -> (key, seed): for seeds_of, built on first need
        self._seeds: tuple[dict[str, list[tuple[str, int]]], dict[str, list[tuple[str, int]]]] | None = None
        self._batch: subprocess.Popen[bytes] | None = None
        self._mutex = threading.Lock()
        # Commit -> (folders, what `ls-tree` listed under them): checking an index's rows lists
        # the commit a restore pass then reads from; a fresh clone need not ask git twice.
        self._listings: dict[str, tuple[frozenset[str], dict[str, tuple[str, int]]]] = {}

    @classmethod
    def open(
        cls, root: Path, lock_path: Path, cache_dir: Path | None, current: Lock | None = None
    ) -> History | None:
        """The history of the repository holding `root`, or None (no git, no commit yet);
        `current`, the working lock, spares parsing a committed version with the same bytes."""
        try:
            said = _git(
                root, "rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-path", "shallow", "HEAD"
            )
            out = said.decode().split("\n")
            toplevel = Path(out[0]).resolve()
            prefix = root.resolve().relative_to(toplevel).as_posix()
            lock_rel = lock_path.resolve().relative_to(toplevel).as_posix()
            head = out[3].strip()
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        name = hashlib.sha256(f"{toplevel}\0{lock_rel}".encode()).hexdigest()[:32]
        cache = cache_dir / f"{name}.json" if cache_dir is not None else None
        merging = _merging(root, Path(out[1]), head)
        history = cls(toplevel, "" if prefix == "." else prefix, lock_rel, head, cache, current, merging)
        history.shallow = _shallow(root / out[2])
        return history

    def lookup(self, key: str) -> list[Source]:
        """Every committed record of bytes made for `key`, newest commit first."""
        found = []
        for row in self.index().get(key, ()):
            with contextlib.suppress(ValueError, TypeError):  # a damaged cache row
                found.append(_source(row))
        return found

    def alternates(self, source: Source) -> list[Source]:
        """Other commits that recorded the same bytes (tried when one's tree lacks the file)."""
        if self._by_sha is None:
            self._by_sha = {}
            for rows in self.index().values():
                for row in rows:
                    self._by_sha.setdefault(row[0], []).append(row)
        found = []
        for row in self._by_sha.get(source.sha256, ()):
            with contextlib.suppress(ValueError, TypeError):  # a damaged cache row
                found.append(_source(row))
        return [s for s in found if (s.commit, s.path) != (source.commit, source.path)]

    def recorded_at(self, out: str, sha256: str) -> bool:
        """Whether a committed lock recorded these bytes as the output at `out`: flexforge made
        them, and git keeps them."""
        if self._outputs is None:
            self._outputs = {(row[2], row[0]) for rows in self.index().values() for row in rows}
        return (out, sha256) in self._outputs

    def at_tip(self, out: str, sha256: str) -> bool:
        """Whether HEAD (or a commit being merged in) holds these bytes at `out`: the file in
        place is the checkout's own, not one put back by hand (`git checkout HEAD~1 -- out`)."""
        if "\n" in out:
            return False
        for tip in self.tips:
            found = self._object(f"{tip}:{self._repo_path(out)}", MAX_LOCK_BYTES)
            if found is not None and sha256_bytes(found[1]) == sha256:
                return True
        return False

    def seeds_of(self, asset_id: str, sha256: str | None) -> list[tuple[str, int]]:
        """(key, seed) of every committed record of these bytes, then of every one made for
        `asset_id`: where an asset with no lock entry finds the seed a committed lock pinned
        for it (the other side of a merge drew it; an id added back)."""
        if self._seeds is None:
            by_sha: dict[str, list[tuple[str, int]]] = {}
            by_id: dict[str, list[tuple[str, int]]] = {}
            for key, rows in self.index().items():
                for row in rows:
                    sha, seed, origin = row[0], row[4], row[8]
                    if isinstance(seed, int) and not isinstance(seed, bool):
                        by_sha.setdefault(sha, []).append((key, seed))
                        by_id.setdefault(origin, []).append((key, seed))
            self._seeds = (by_sha, by_id)
        by_sha, by_id = self._seeds
        found = by_sha.get(sha256, []) if sha256 is not None else []
        return list(dict.fromkeys([*found, *by_id.get(asset_id, [])]))

    def index(self) -> dict[str, list[Row]]:
        if self._index is None:
            self._index = self._load()
        return self._index

    def _load(self) -> dict[str, list[Row]]:
        cached = self._read_cache()
        if cached is not None and cached.get("shallow", "") != self.shallow:
            cached = None  # deepened (or made shallow): older commits the index never saw
        tips = " ".join(self.tips)  # what the index covers: HEAD and any commit being merged in
        if cached is not None:
            moved = cached.get("moved", {})
            if isinstance(moved, dict):
                self._moved = {c: p for c, p in moved.items() if isinstance(c, str) and isinstance(p, str)}
        if cached is not None and cached["head"] == tips:
            return dict(cached["keys"])
        since: list[str] = []
        index: dict[str, list[Row]] = {}
        seen: list[str] = []
        if cached is not None and all(self._is_ancestor(c) for c in cached["head"].split()):
            since, index, seen = cached["head"].split(), dict(cached["keys"]), list(cached["blobs"])
        index, seen = self._extend(index, seen, since)
        doc = {
            "v": INDEX_VERSION,
            "head": tips,
            "shallow": self.shallow,
            "keys": index,
            "blobs": seen,
            "moved": self._moved,
        }
        self._write_cache(doc)
        return index

    def _extend(
        self, index: dict[str, list[Row]], seen: list[str], since: list[str]
    ) -> tuple[dict[str, list[Row]], list[str]]:
        """Add every lock version committed after the commits `since` (all, when none).
        --full-history keeps side branches a merge threw away: their images are still in the
        repository."""
        revs = [*self.tips, *(f"^{commit}" for commit in since)]
        try:
            commits = _git(self.toplevel, "rev-list", "--full-history", *revs, "--", self.lock_rel).split()
        except (OSError, subprocess.SubprocessError):
            return index, seen
        passes = [([c.decode() for c in commits], self.lock_rel)]
        if not since:  # an index extended was built after any move: its cache is named by the path
            passes += self._before_moves(passes[0][0])
        # A version an earlier index read is read again when a newer commit brings it back (a
        # revert): its keys are then the newest, and seeds_of gives the newest seed first.
        indexed = set(seen)
        known_blobs: set[str] = set()
        fresh: dict[str, list[Row]] = {}
        added = read = 0
        for commit, lock_rel in ((c, rel) for found, rel in passes for c in found):
            if added >= MAX_VERSIONS or read >= MAX_HISTORY_BYTES:
                break
            found = self._object(f"{commit}:{lock_rel}", MAX_LOCK_BYTES)
            if found is None or found[0] in known_blobs:
                continue
            oid, raw = found
            read += len(raw)
            known_blobs.add(oid)
            if oid not in indexed:
                seen.append(oid)
            added += 1
            if lock_rel != self.lock_rel:
                self._moved[commit] = posixpath.dirname(lock_rel)
            try:
                known = self._current.entries_of(raw) if self._current is not None else None
                entries = known if known is not None else parse_entries(raw)
            except ValueError:
                continue  # a broken lock in some old commit: that commit has nothing to give
            for asset_id, e in sorted(entries.items()):
                row = [e.sha256, e.size, e.out, commit, e.seed, e.task_id, e.cost_usd, e.provider, asset_id]
                fresh.setdefault(e.key, []).append(row)
        fresh = self._held(fresh)
        # Newer commits first, then what was known before, in rows and in keys alike: seeds_of
        # answers in key order, and an extended index must give the newest seed first too.
        merged = {key: rows + index.get(key, []) for key, rows in fresh.items()}
        merged.update((key, rows) for key, rows in index.items() if key not in merged)
        return merged, seen

    def _before_moves(self, commits: list[str]) -> list[tuple[list[str], str]]:
        """(commits, the lock's path in them) from before each move of the project folder, newest
        first: the oldest commit of the lock at a path is asked whether it renamed the lock there
        (git's rename detection), and if so, the history before it is listed at the old path."""
        passes: list[tuple[list[str], str]] = []
        lock_rel = self.lock_rel
        for _ in range(MAX_MOVES):
            if not commits:
                break
            oldest = commits[-1]
            try:
                said = _git(
                    self.toplevel, "diff-tree", "-r", "-M", "--name-status", "-z", "--no-commit-id", oldest
                )
                old = _renamed_to(said.decode(errors="surrogateescape"), lock_rel)
                if old is None:
                    break
                lock_rel = old
                older = _git(self.toplevel, "rev-list", "--full-history", f"{oldest}^", "--", lock_rel)
            except (OSError, subprocess.SubprocessError):
                break
            commits = [c.decode() for c in older.split()]
            passes.append((commits, lock_rel))
        return passes

    def _held(self, rows_by_key: dict[str, list[Row]]) -> dict[str, list[Row]]:
        """Only the rows whose commit holds a file of the recorded size at the recorded path: a
        lock also names outputs nobody committed (gitignored, or kept in the cache), and a plan
        must not promise a free restore the build then pays for. One `git cat-file
        --batch-check` pass answers them all; no git at all keeps nothing."""
        rows = [row for rows in rows_by_key.values() for row in rows if _askable(row)]
        by_commit: dict[str, list[Row]] = {}
        for row in rows:
            by_commit.setdefault(row[3], []).append(row)
        held: set[int] = set()
        # A commit with many outputs is listed once (`ls-tree -r -l`): asked one path at a time,
        # git walks the commit's tree again for each, a third of a second per 2,000 rows.
        listed = {
            commit: sorted({self._repo_path(row[2], commit).rpartition("/")[0] for row in commit_rows})
            for commit, commit_rows in by_commit.items()
            if len(commit_rows) >= LIST_TREE_FROM and _OBJECT_ID.match(commit)
        }
        rest = [row for row in rows if row[3] not in listed]
        # The listings and the one-by-one pass are separate git processes: run side by side.
        with ThreadPoolExecutor(max(1, min(4, len(listed) + 1))) as pool:
            one_by_one = pool.submit(self._held_one_by_one, rest)
            sizes = dict(zip(listed, pool.map(lambda c: self._sizes(c, listed[c]), listed), strict=True))
            held |= one_by_one.result()
        for commit, commit_sizes in sizes.items():
            held |= {
                id(row)
                for row in by_commit[commit]
                if commit_sizes.get(self._repo_path(row[2], commit)) == row[1]
            }
        kept = {key: [row for row in rows if id(row) in held] for key, rows in rows_by_key.items()}
        return {key: rows for key, rows in kept.items() if rows}

    def _held_one_by_one(self, rows: list[Row]) -> set[int]:
        """id() of the rows whose commit holds the file, asked through one --batch-check pass."""
        if not rows:
            return set()
        names = "".join(f"{row[3]}:{self._repo_path(row[2], row[3])}\n" for row in rows)
        try:
            answer = subprocess.run(
                [*GIT_COMMAND, "cat-file", "--buffer", "--batch-check=%(objecttype) %(objectsize)"],
                cwd=self.toplevel,
                input=names.encode(),
                capture_output=True,
                env={**os.environ, **GIT_ENV},
                timeout=300,
                check=True,
            ).stdout.decode(errors="replace")
        except (OSError, subprocess.SubprocessError):
            return set()
        lines = answer.splitlines()
        if len(lines) != len(rows):
            return set()
        return {id(row) for row, line in zip(rows, lines, strict=True) if line == f"blob {row[1]}"}

    def _repo_path(self, out: str, commit: str | None = None) -> str:
        """`out` (project-relative) as a path in the repository, in `commit` when given: the
        project folder may have been elsewhere then."""
        prefix = self._moved.get(commit, self.prefix) if commit is not None else self.prefix
        return f"{prefix}/{out}" if prefix else out

    def _is_ancestor(self, commit: str) -> bool:
        """Whether `commit` is reachable from HEAD or a commit being merged in."""
        if not _OBJECT_ID.match(commit):
            return False
        for tip in self.tips:
            try:
                _git(self.toplevel, "merge-base", "--is-ancestor", commit, tip)
            except (OSError, subprocess.SubprocessError):
                continue
            return True
        return False

    def _read_cache(self) -> dict[str, Any] | None:
        if self._cache is None:
            return None
        try:
            doc = json.loads(self._cache.read_bytes())
        except (OSError, ValueError):
            return None
        ok = isinstance(doc, dict) and doc.get("v") == INDEX_VERSION and isinstance(doc.get("keys"), dict)
        return doc if ok and isinstance(doc.get("head"), str) and isinstance(doc.get("blobs"), list) else None

    def _write_cache(self, doc: dict[str, Any]) -> None:
        if self._cache is None:
            return
        with contextlib.suppress(OSError):  # a cache we cannot write is rebuilt next time
            data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
            atomic_write(self._cache, data, durable=False)

    def read(self, commit: str, out: str, size: int) -> bytes | None:
        """The bytes of `out` (project-relative) in `commit`, if they are `size` bytes long;
        the caller checks their sha256."""
        if "\n" in out or "\n" in commit:
            return None
        found = self._object(f"{commit}:{self._repo_path(out, commit)}", size)
        return found[1] if found is not None and len(found[1]) == size else None

    def read_many(self, wanted: list[tuple[str, str, int]]) -> Iterator[tuple[bytes, str] | None]:
        """`read` for each (commit, out, size), in order, streamed, with git's blob id of the
        bytes: the blob ids come from one `git ls-tree` per commit and the bytes from one `git
        cat-file --batch` pass fed by a thread, so a thousand restores cost no tree walk and no
        round trip each. Stop early by closing the iterator.

        The blob id is the object's name in git's store, whose objects git checked against their
        names when they arrived (index-pack): it need not be computed again."""
        names = self._blob_ids(wanted)
        asked = [name for name in names if name is not None]
        if not asked:
            yield from (None for _ in wanted)
            return
        try:
            batch = self._spawn("--batch", "--buffer")
        except OSError:
            yield from (None for _ in wanted)
            return
        assert batch.stdin is not None and batch.stdout is not None
        _widen(batch.stdout)
        feeder = threading.Thread(target=_feed, args=(batch.stdin, asked), daemon=True)
        feeder.start()
        broken = False
        try:
            for name, (_, _, size) in zip(names, wanted, strict=True):
                if name is None or broken:
                    yield None
                    continue
                try:
                    found = _next_blob(batch.stdout, size)
                except (OSError, ValueError):
                    broken = True  # git died or said something else: the rest are read one by one
                    found = None
                yield found
        finally:
            batch.kill()
            batch.wait()
            feeder.join()
            batch.stdout.close()

    def _blob_ids(self, wanted: list[tuple[str, str, int]]) -> list[str | None]:
        """What to ask `git cat-file` for each (commit, out): the blob id where one `git ls-tree`
        of that commit lists many wanted files (no tree walk per file), else `commit:path` (no
        process per commit when each file comes from another commit); None when it cannot be
        asked (not a plain file there, a commit that is not an object id)."""
        paths: list[tuple[str, str] | None] = []
        by_commit: dict[str, set[str]] = {}
        for commit, out, _ in wanted:
            if not _OBJECT_ID.match(commit) or "\n" in out:
                paths.append(None)  # a cached row this code did not write: read one by one
                continue
            path = self._repo_path(out, commit)
            paths.append((commit, path))
            by_commit.setdefault(commit, set()).add(path)
        trees = {
            commit: self._tree(commit, sorted({p.rpartition("/")[0] for p in names}))
            for commit, names in by_commit.items()
            if len(names) >= LIST_TREE_FROM
        }
        names: list[str | None] = []
        for p in paths:
            if p is None:
                names.append(None)
            elif p[0] in trees:
                names.append(trees[p[0]].get(p[1]))
            else:
                names.append(f"{p[0]}:{p[1]}")
        return names

    def _sizes(self, commit: str, folders: list[str]) -> dict[str, int]:
        """Repository path -> size of the plain files under `folders` in `commit`."""
        return {path: size for path, (_, size) in self._listing(commit, folders).items()}

    def _tree(self, commit: str, folders: list[str]) -> dict[str, str]:
        """Repository path -> blob id of the plain files under `folders` in `commit`."""
        return {path: blob for path, (blob, _) in self._listing(commit, folders).items()}

    def _listing(self, commit: str, folders: list[str]) -> dict[str, tuple[str, int]]:
        """Repository path -> (blob id, size) of the plain files under `folders` in `commit`
        (links and submodules left out: an output is never one); empty when git cannot say."""
        known = self._listings.get(commit)
        if known is not None and ("" in known[0] or known[0].issuperset(folders)):
            return known[1]
        spec = [f or "." for f in folders]
        try:
            raw = _git(self.toplevel, "--literal-pathspecs", "ls-tree", "-r", "-l", "-z", commit, "--", *spec)
        except (OSError, subprocess.SubprocessError):
            return {}
        found = {}
        for record in raw.split(b"\0"):
            meta, _, path = record.partition(b"\t")
            fields = meta.split()
            if len(fields) == 4 and fields[0] in (b"100644", b"100755") and fields[1] == b"blob":
                found[path.decode(errors="surrogateescape")] = (fields[2].decode(), int(fields[3]))
        self._listings[commit] = (frozenset(folders), found)
        return found

    def blob(self, commit: str, repo_path: str, limit: int) -> bytes | None:
        """The bytes of repository-relative `repo_path` in `commit` (any commit, not only those
        that touched the lock), or None when it is missing, not a blob or bigger than `limit`."""
        if "\n" in repo_path or "\n" in commit:
            return None
        found = self._object(f"{commit}:{repo_path}", limit)
        return found[1] if found is not None else None

    def _object(self, spec: str, limit: int) -> tuple[str, bytes] | None:
        """(object id, contents) of a blob named like `commit:path`, or None when it is missing,
        not a blob or bigger than `limit` bytes."""
        with self._mutex:
            batch = self._process()
            if batch is None:
                return None
            assert batch.stdin is not None and batch.stdout is not None
            try:
                batch.stdin.write(spec.encode() + b"\n")
                batch.stdin.flush()
                header = batch.stdout.readline().split()
                if len(header) != 3:
                    return None  # "<spec> missing" or "ambiguous"
                oid, kind, length = header[0].decode(), header[1], int(header[2])
                if kind != b"blob" or length > limit:
                    _skip(batch.stdout, length + 1)
                    return None
                data = _read_exact(batch.stdout, length)
                batch.stdout.read(1)  # the newline after each object
            except (OSError, ValueError):
                self._stop()
                return None
        return oid, data

    def _process(self) -> subprocess.Popen[bytes] | None:
        if self._batch is None or self._batch.poll() is not None:
            try:
                self._batch = self._spawn("--batch")
            except OSError:
                return None
        return self._batch

    def _spawn(self, *options: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*GIT_COMMAND, "cat-file", *options],
            cwd=self.toplevel,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **GIT_ENV},
        )

    def _stop(self) -> None:
        if self._batch is not None:
            self._batch.kill()
            self._batch.wait()
            self._batch = None

    def close(self) -> None:
        with self._mutex:
            if self._batch is not None and self._batch.stdin is not None:
                self._batch.stdin.close()
                self._batch.wait()
                self._batch = None


def default_cache_dir() -> Path:
    from flexforge.paths import user_cache_root

    return Path(user_cache_root()) / "history"


def _git(cwd: Path, *args: str) -> bytes:
    return subprocess.run(
        [*GIT_COMMAND, *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
        timeout=300,
    ).stdout


def _merging(root: Path, git_dir: Path, head: str) -> tuple[str, ...]:
    """The commits a merge, rebase or cherry-pick in progress brings in (git's MERGE_HEAD,
    REBASE_HEAD, CHERRY_PICK_HEAD): object ids only, read without following links, and only
    commits this repository has."""
    from flexforge.fsutil import read_regular

    names = ["MERGE_HEAD", "CHERRY_PICK_HEAD"]
    # git leaves REBASE_HEAD behind when a rebase that stopped is finished: it names a commit
    # nothing reaches (and `git gc` prunes), so it counts only while the rebase is under way.
    if any((git_dir / folder).is_dir() for folder in ("rebase-merge", "rebase-apply")):
        names.append("REBASE_HEAD")
    found: list[str] = []
    for name in names:
        try:
            text = read_regular(git_dir / name, 4096).decode("ascii")
        except (OSError, UnicodeDecodeError):
            continue
        found += [line for line in text.split() if _OBJECT_ID.match(line) and line != head]
    # A tip git cannot find would make every rev-list fail: no history at all, all of it paid for.
    return tuple(commit for commit in dict.fromkeys(found) if _is_commit(root, commit))


def _is_commit(root: Path, object_id: str) -> bool:
    try:
        _git(root, "cat-file", "-e", f"{object_id}^{{commit}}")
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _shallow(path: Path) -> str:
    """A digest of git's `shallow` file (the commits a shallow clone's history stops at), or ""
    when the repository is complete."""
    from flexforge.fsutil import read_regular

    try:
        return hashlib.sha256(read_regular(path, 256 * 2**20)).hexdigest()
    except FileNotFoundError:
        return ""
    except OSError:
        return "unreadable"


def _renamed_to(name_status: str, path: str) -> str | None:
    """The path `git diff-tree -M --name-status -z` says was renamed to `path`, if any."""
    fields = name_status.split("\0")
    i = 0
    while i + 1 < len(fields) and fields[i]:
        status = fields[i]
        if status[:1] in ("R", "C"):  # a rename or copy names two paths
            if status[:1] == "R" and i + 2 < len(fields) and fields[i + 2] == path:
                old = fields[i + 1]
                return old if old != path and "\n" not in old else None
            i += 3
        else:
            i += 2
    return None


def _askable(row: Row) -> bool:
    """A row git can be asked about on one line of --batch-check: a damaged lock's odd path or
    size is not asked (and so not kept)."""
    out, size = row[2], row[1]
    return isinstance(out, str) and "\n" not in out and isinstance(size, int) and size >= 0


def _source(row: Row) -> Source:
    sha, size, out, commit, seed, task_id, cost, provider, origin = row
    return Source(GIT, sha, size, out, commit, seed, task_id, cost, provider, origin)


def _feed(stdin: IO[bytes], names: list[str]) -> None:
    """Write every object id for `git cat-file --batch`, in a thread of its own: written all at
    once by the reader, a full pipe each way would block both."""
    try:
        for name in names:
            stdin.write(name.encode(errors="surrogateescape") + b"\n")
        stdin.close()
    except OSError:
        pass  # the reader stopped early and killed git


def _widen(stream: IO[bytes]) -> None:
    """Let git run up to a MiB ahead of the reader (Linux; 64 KiB elsewhere): while a restore
    is verified and written, git is already reading the next objects on the other core."""
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined,unused-ignore]


def _next_blob(stream: IO[bytes], size: int) -> tuple[bytes, str] | None:
    """The next object `git cat-file --batch` answers with, if it is a blob of `size` bytes:
    its bytes and its id."""
    line = stream.readline()
    if line.endswith((b" missing\n", b" ambiguous\n")):  # after a name that may hold spaces
        return None
    header = line.split()
    if len(header) != 3 or not _OBJECT_ID.match(header[0].decode("ascii", "replace")):
        raise ValueError("git cat-file said something else")
    kind, length = header[1], int(header[2])
    if kind != b"blob" or length != size:
        _skip(stream, length + 1)
        return None
    data = _read_exact(stream, length)
    stream.read(1)  # the newline after each object
    return data, header[0].decode("ascii")


def _read_exact(stream: IO[bytes], length: int) -> bytes:
    data = stream.read(length)
    if len(data) != length:
        raise ValueError("git cat-file ended early")
    return data


def _skip(stream: IO[bytes], length: int) -> None:
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            raise ValueError("git cat-file ended early")
        length -= len(chunk)
