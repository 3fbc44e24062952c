"""Where the bytes for a content key can come from with no API call, and bringing them back.

In the order DESIGN §8 gives: the output already in place; a file in the working tree that the
lock records for that key (a renamed id, a moved output); the local object cache; git history;
the team remote (flexforge.remote).
Every source is verified before it counts (sha256, then an image of the declared format and size).
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexforge.confine import Resolver
from flexforge.errors import FlexforgeError
from flexforge.fsutil import read_regular, sha256_bytes
from flexforge.lockfile import Lock
from flexforge.noop import stamp_of

if TYPE_CHECKING:
    from flexforge.history import History
    from flexforge.manifest import Asset
    from flexforge.remote import RemoteIndex
    from flexforge.store import Store

IN_PLACE, WORKING_TREE, CACHE, GIT, REMOTE = "in place", "working tree", "cache", "git", "remote"
MADE = "made"  # not a restore source: bytes a provider just returned


@dataclass(frozen=True, slots=True)
class Source:
    """Bytes known to be an output of one content key, and what the lock should say of them."""

    kind: str
    sha256: str
    size: int
    path: str | None = None  # root-relative file (in place, working tree) or repo-relative (git)
    commit: str | None = None  # git: the commit whose tree holds `path`
    seed: int | None = None
    task_id: str | None = None
    cost_usd: float | None = None
    provider: str | None = None
    origin: str | None = None  # the lock entry (asset id) that recorded these bytes

    @property
    def label(self) -> str:
        """What `plan` prints after `restore`: `git 1a2b3c4`, `working tree: old/path.png`."""
        if self.kind == GIT and self.commit is not None:
            return f"git {self.commit[:7]}"
        if self.kind == WORKING_TREE:
            return f"working tree: {self.path}"
        return self.kind


class Current:
    """The file at an output path, hashed only when its size says it could be the bytes asked
    about: a fresh clone whose prompts were reverted need not hash every old output."""

    def __init__(self, store: Store, rel: str) -> None:
        self._store = store
        self._rel = rel
        self._size: int | None = None
        self._stat_done = False
        self._stamp: list[int] | None = None  # a plain file's, for digest(): one stat for both
        self._digest: str | None = None
        self._hashed = False

    @property
    def exists(self) -> bool:
        return self.size is not None

    @property
    def size(self) -> int | None:
        if not self._stat_done:
            self._stat_done = True
            try:
                st = os.stat(os.path.join(self._store.root, self._rel))
            except OSError:
                self._size = None
            else:
                if stat.S_ISREG(st.st_mode):
                    self._size = st.st_size
                    self._stamp = stamp_of(st)
                else:
                    self._size = -1
        return self._size

    @property
    def digest(self) -> str | None:
        if not self._hashed:
            self._hashed = True
            self.size  # noqa: B018 - the stamp the digest is read under
            self._digest = self._store.digest(self._rel, self._stamp)
        return self._digest

    def matches(self, sha256: str, size: int) -> bool:
        return self.size in (size, -1) and self.digest == sha256


class Nowhere(Current):
    """Nothing at the output path to look at: a candidate kept in the cache only (Asset.written
    False) is never read from, or written to, the working tree at its `out`."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, "")

    @property
    def size(self) -> int | None:
        return None

    @property
    def digest(self) -> str | None:
        return None


class Sources:
    """The restore sources of one project, searched per key; git history is read only when the
    cheaper sources have nothing, so a no-op plan never starts git."""

    def __init__(self, lock: Lock, store: Store, history: Callable[[], History | None] | None = None) -> None:
        self.lock = lock
        self.store = store
        self._history_factory = history
        self._history: History | None = None
        self._history_loaded = False
        self._history_mutex = threading.Lock()
        self._by_key: dict[str, list[Source]] | None = None
        self.remote: RemoteIndex | None = None  # the team remote, when the project has one
        self._resolver: Resolver | None = None  # for paths old locks record (in_tree)

    def _lock_index(self) -> dict[str, list[Source]]:
        """Key -> what the lock (current and orphaned entries alike) records for it."""
        if self._by_key is None:
            self._by_key = {}
            for asset_id, entry in self.lock.entries.items():
                self._by_key.setdefault(entry.key, []).append(
                    Source(
                        WORKING_TREE,
                        entry.sha256,
                        entry.size,
                        entry.out,
                        seed=entry.seed,
                        task_id=entry.task_id,
                        cost_usd=entry.cost_usd,
                        provider=entry.provider,
                        origin=asset_id,
                    )
                )
        return self._by_key

    @property
    def history(self) -> History | None:
        with self._history_mutex:  # staging threads may ask first
            if not self._history_loaded:
                self._history = self._history_factory() if self._history_factory is not None else None
                self._history_loaded = True
        return self._history

    def find(self, key: str, out: str, current: Current) -> Source | None:
        """Where the bytes for `key` come from, cheapest first; None when only the API has them."""
        recorded = self._lock_index().get(key, [])
        record = _key_record(self.store, key)
        found = self._search([*recorded, *([record] if record else [])], out, current)
        if found is not None or record is not None:
            return found or record
        # The object cache is content-addressed: an object with the lock's digest is those bytes,
        # even when the record saying which key made it is gone (or was not written here).
        for source in recorded:
            if self.store.has_object(source.sha256):
                return _with(source, kind=CACHE, path=None)
        history = self.history
        found = self._search(history.lookup(key), out, current) if history is not None else None
        if found is None and self.remote is not None:
            held = self.remote.record(key)  # the remote is listed once, on the first key missing here
            if held is not None:
                sha, size = held
                return found or Source(REMOTE, sha, size)
        return found

    def committed_output(self, out: str, sha256: str | None) -> bool:
        """Whether git history records these bytes as the output at `out`, and the checkout holds
        them there: flexforge's own older image, which the lock has moved past (`lock merge`, a
        lock taken from another branch), not one put back by hand."""
        history = self.history if sha256 is not None else None
        if history is None or sha256 is None:
            return False
        return history.recorded_at(out, sha256) and history.at_tip(out, sha256)

    def committed_seeds(self, asset_id: str, sha256: str | None) -> list[tuple[str, int]]:
        """(key, seed) pairs git history recorded for these bytes or this asset id (see
        History.seeds_of); none without git."""
        history = self.history
        return history.seeds_of(asset_id, sha256) if history is not None else []

    def remote_details(self, source: Source, key: str) -> Source:
        """A remote source with what the machine that pushed it said of it (provider, seed, task,
        cost), when it said so soundly."""
        told = self.remote.details(key, source.sha256, source.size) if self.remote is not None else None
        if told is None:
            return source
        return _with(
            source, seed=told.seed, task_id=told.task_id, cost_usd=told.cost_usd, provider=told.provider
        )

    def _search(self, known: list[Source], out: str, current: Current) -> Source | None:
        """In place, else a working-tree file the records name, else (for history) git itself."""
        for source in known:
            if current.matches(source.sha256, source.size):
                return _with(source, kind=IN_PLACE, path=out, commit=None)
        for source in known:
            path = source.path
            if path is None or path == out or not self.in_tree(path):
                continue
            if self.store.digest(path) == source.sha256:
                return _with(source, kind=WORKING_TREE, commit=None)
        for source in known:
            # The object cache by digest: an object is checked against its name on every read, so
            # a lock's digest finds it even when the key record is missing or not this machine's.
            if source.kind != GIT and self.store.has_object(source.sha256):
                return _with(source, kind=CACHE, path=None, commit=None)
        return next((s for s in known if s.kind == GIT), None)

    def in_tree(self, path: str) -> bool:
        """Whether a path a lock records may be read in the working tree: relative, inside the
        project, out of `.git/` and the state folder, and reached through no link at all (a
        committed link, to a file or to a folder on the way, may lead anywhere on this machine)."""
        from flexforge.imagesource import confined

        if not path or path.startswith("/") or ".." in path.split("/"):
            return False
        if self._resolver is None:
            self._resolver = Resolver(self.store.root)
        found = confined(self._resolver, path)  # inside, out of .git/ and .flexforge/
        return found is not None and found == self._resolver.root / posixpath.normpath(path)

    def fetch(self, source: Source, asset: Asset) -> tuple[bytes | None, str | None]:
        """The source's bytes, verified (their sha256, then the header of the declared image), or
        why not: damaged, changed, or not the declared image (then the asset is generated)."""
        data = self._verified(source)
        if data is None:
            return None, "damaged or gone"
        problem = declared_problem(data, asset)
        return (None, problem) if problem is not None else (data, None)

    def fetch_many(
        self, wanted: list[tuple[Source, Asset]]
    ) -> Generator[tuple[bytes | None, str | None, str | None], None, None]:
        """`fetch` for each (source, asset), in order, with the git blob id of the bytes when git
        named it (else None); git sources are streamed from one pass over git's objects, and one
        that fails there is fetched again on its own (another commit that recorded the same
        bytes may still have them)."""
        history = self.history
        at_once = [(s.commit, s.path, s.size) for s, _ in wanted if s.kind == GIT and s.commit and s.path]
        stream = iter(history.read_many(at_once) if history is not None and at_once else ())
        try:
            for source, asset in wanted:
                streamed = source.kind == GIT and source.commit and source.path
                found = next(stream, None) if streamed else None
                if found is None or sha256_bytes(found[0]) != source.sha256:
                    yield (*self.fetch(source, asset), None)
                    continue
                data, blob = found
                problem = declared_problem(data, asset)
                # gitblobs pairs SHA-1 blob ids only (a SHA-256 repository's are longer)
                yield (None, problem, None) if problem is not None else (data, None, _sha1_id(blob))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def cache(self, source: Source, asset: Asset) -> str | None:
        """Put the source's verified bytes in the object cache (an output kept there only), or
        say why not: damaged, gone, or not the declared image."""
        data, problem = self.fetch(source, asset)
        if data is not None:
            self.store.put_object(data)
        return problem

    def in_place_problem(self, source: Source, asset: Asset) -> str | None:
        """Why the file already at the output path is not the source's bytes and image, or None."""
        data = self._verified(source)
        return "changed" if data is None else declared_problem(data, asset)

    def _verified(self, source: Source) -> bytes | None:
        """The source's bytes if their sha256 is the recorded one; for git, any commit that
        recorded the same bytes will do."""
        data = self.read(source)
        if data is not None and sha256_bytes(data) == source.sha256:
            return data
        if source.kind != GIT or self.history is None:
            return None
        for candidate in self.history.alternates(source):  # only when the first is gone
            data = self.read(candidate)
            if data is not None and sha256_bytes(data) == source.sha256:
                return data
        return None

    def lfs_pointer(self, rel: str) -> bool:
        """Whether the file at `rel` is a Git LFS pointer standing in for an image (a clone
        made without `git lfs`): reported as such instead of as a hand edit."""
        from flexforge.imaging import LFS_POINTER_LIMIT, lfs_pointer

        try:
            return lfs_pointer(read_regular(self.store.root / rel, LFS_POINTER_LIMIT))
        except (OSError, FlexforgeError):
            return False

    def read(self, source: Source) -> bytes | None:
        if source.kind == CACHE:
            return self.store.read_object(source.sha256)
        if source.kind == REMOTE:
            data = self.remote.fetch(source.sha256) if self.remote is not None else None
            if data is not None:  # its digest was checked; kept so that the next build reads it here
                self.store.put_object(data)
            return data
        if source.kind == GIT:
            history = self.history
            if history is None or source.commit is None or source.path is None:
                return None
            return history.read(source.commit, source.path, source.size)
        if source.path is None:
            return None
        try:
            # Never through a link: a committed one could point anywhere on this machine.
            return read_regular(self.store.root / source.path, max(source.size, 1) + 1)
        except (OSError, FlexforgeError):
            return None

    def close(self) -> None:
        if self._history is not None:
            self._history.close()


def _with(source: Source, **changes: Any) -> Source:
    from dataclasses import replace

    return replace(source, **changes)


def _key_record(store: Store, key: str) -> Source | None:
    record = store.key_record(key)
    if record is None:
        return None
    return Source(
        CACHE,
        record.sha256,
        record.size,
        seed=record.seed,
        task_id=record.task_id,
        cost_usd=record.cost_usd,
        provider=record.provider,
    )


def declared_problem(data: bytes, asset: Asset) -> str | None:
    """Why `data` is not an image of the asset's declared format and size, by its header only
    (no planted file is ever decoded in full), or None. A plain PNG of the declared size is read
    without loading Pillow for each of a thousand restores (imaging.png_size: only where Pillow
    would read the same); anything else is Pillow's to judge."""
    from flexforge.imaging import header_problem, png_size

    width, height = asset.final_size or (asset.width, asset.height)
    if asset.output_format == "png" and png_size(data) == (width, height):
        return None
    problem = header_problem(data, width, height, asset.output_format)
    return None if problem is None else f"not the declared image ({problem})"


def _sha1_id(blob: str) -> str | None:
    return blob if len(blob) == 40 else None
