"""Where the bytes for a content key can come from with no API call, and bringing them back.

In the order DESIGN §8 gives: the output already in place; a file in the working tree that the
lock records for that key (a renamed id, a moved output); the local object cache; git history.
Every source is verified before it counts (sha256, then an image of the declared format and size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexforge.fsutil import sha256_bytes, stage_bytes, stage_copy
from flexforge.lockfile import Lock

if TYPE_CHECKING:
    from flexforge.history import History
    from flexforge.manifest import Asset
    from flexforge.store import Store

IN_PLACE, WORKING_TREE, CACHE, GIT = "in place", "working tree", "cache", "git"
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


class Sources:
    """The restore sources of one project, searched per key; git history is read only when the
    cheaper sources have nothing, so a no-op plan never starts git."""

    def __init__(self, lock: Lock, store: Store, history: Callable[[], History | None] | None = None) -> None:
        self.lock = lock
        self.store = store
        self._history_factory = history
        self._history: History | None = None
        self._history_loaded = False
        self._by_key: dict[str, list[Source]] | None = None

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
        if not self._history_loaded:
            self._history_loaded = True
            self._history = self._history_factory() if self._history_factory is not None else None
        return self._history

    def find(self, key: str, out: str, current: str | None) -> Source | None:
        """Where the bytes for `key` come from, cheapest first; None when only the API has them."""
        record = _key_record(self.store, key)
        found = self._search([*self._lock_index().get(key, ()), *([record] if record else [])], out, current)
        if found is not None or record is not None:
            return found or record
        history = self.history
        return self._search(history.lookup(key), out, current) if history is not None else None

    def _search(self, known: list[Source], out: str, current: str | None) -> Source | None:
        """In place, else a working-tree file the records name, else (for history) git itself."""
        for source in known:
            if current is not None and source.sha256 == current:
                return _with(source, kind=IN_PLACE, path=out, commit=None)
        for source in known:
            path = source.path
            if path is None or path == out or not _is_safe(path):
                continue
            if self.store.digest(path) == source.sha256:
                return _with(source, kind=WORKING_TREE, commit=None)
        return next((s for s in known if s.kind == GIT), None)

    def stage(self, source: Source, asset: Asset, dest: Path) -> Path | None:
        """A verified copy of the source's bytes staged beside `dest`, for fsutil.install; None
        when the source turned out damaged, changed or not the declared image (then the asset
        is generated). An `in place` source stages nothing: the bytes are already there."""
        if source.kind == CACHE:
            staged = self.store.stage_object(source.sha256, dest)
            return staged if staged is None or _image_ok(staged.read_bytes(), asset, staged) else None
        data = self.read(source)
        if data is not None and sha256_bytes(data) != source.sha256:
            data = None
        if data is None and source.kind == GIT and self.history is not None:
            for other in self.history.alternates(source):
                data = self.read(other)
                if data is not None and sha256_bytes(data) == source.sha256:
                    break
                data = None
        if data is None or not _image_ok(data, asset, None):
            return None
        if source.kind == WORKING_TREE and source.path is not None:
            return stage_copy(self.store.root / source.path, dest)
        return stage_bytes(dest, data)

    def in_place_ok(self, source: Source, asset: Asset) -> bool:
        """The file already at the output path is still the source's bytes and image."""
        data = self.read(source)
        return data is not None and sha256_bytes(data) == source.sha256 and _image_ok(data, asset, None)

    def read(self, source: Source) -> bytes | None:
        if source.kind == GIT:
            history = self.history
            if history is None or source.commit is None or source.path is None:
                return None
            return history.read(source.commit, source.path, source.size)
        if source.path is None or (self.store.root / source.path).is_symlink():
            return None  # a committed link could point anywhere on this machine
        try:
            return (self.store.root / source.path).read_bytes()
        except OSError:
            return None

    def close(self) -> None:
        if self._history is not None:
            self._history.close()


def _with(source: Source, **changes: Any) -> Source:
    from dataclasses import replace

    return replace(source, **changes)


def _is_safe(path: str) -> bool:
    """A path from history's lock: relative, inside the project, never into .git."""
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts and ".git" not in parts


def _key_record(store: Store, key: str) -> Source | None:
    record = store.key_record(key)
    if record is None:
        return None
    return Source(
        CACHE,
        str(record["sha256"]),
        int(record.get("size") or 0),
        seed=record.get("seed"),
        task_id=record.get("task_id"),
        cost_usd=record.get("cost_usd"),
        provider=record.get("provider"),
    )


def _image_ok(data: bytes, asset: Asset, path: Path | None) -> bool:
    """The bytes are an image of the asset's declared format and size (header only: the
    sha256 already matched bytes that were checked when they were first made)."""
    from flexforge.imaging import header_matches

    width, height = asset.final_size or (asset.width, asset.height)
    ok = header_matches(data, width, height, asset.output_format)
    if not ok and path is not None:
        path.unlink(missing_ok=True)
    return ok
