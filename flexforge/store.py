"""The local state in `.flexforge/`: stat cache, object cache, key index, journal, ledger, lock.

Everything here is a cache or a record that can be rebuilt or lost without losing an image the
lock points at, except the journal, which is what keeps a paid task from being paid twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.fsutil import atomic_write, fsync_file, probe_writable, sha256_bytes, sha256_file, stage_copy
from flexforge.providers import JournalEntry

GITIGNORE = "# Local state of flexforge: caches and in-flight task records. Never commit.\n*\n"
STAT_CACHE = "stat-cache.json"


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.root = state_dir.parent
        self._stats: dict[str, list[Any]] | None = None
        self._stats_dirty = False
        self._ready = False

    def ensure(self) -> None:
        """Make the state folder, refusing one that is a link (a hostile repo could commit a
        `.flexforge` link to anywhere) or a file; every write here goes through this first."""
        if self._ready:
            return
        name = self.dir.name
        if self.dir.is_symlink():
            raise FlexforgeError(
                f"{name} is a symbolic link; flexforge keeps its state in a real folder there: remove it"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FlexforgeError(
                f"{name} exists but is not a folder; flexforge keeps its state there: move it away"
            ) from None
        ignore = self.dir / ".gitignore"
        if not ignore.exists():
            atomic_write(ignore, GITIGNORE.encode(), durable=False)
        self._ready = True

    # -- file digests, cached by (inode, size, mtime_ns) -----------------------------------------

    def _stat_cache(self) -> dict[str, list[Any]]:
        if self._stats is None:
            try:
                self._stats = json.loads((self.dir / STAT_CACHE).read_bytes())
            except (OSError, ValueError):
                self._stats = {}
        return self._stats

    def digest(self, rel: str) -> str | None:
        """sha256 of the file at root-relative `rel`, or None when it does not exist. Content
        decides freshness; the stat triple only spares re-reading unchanged files."""
        path = self.root / rel
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        cached = self._stat_cache().get(rel)
        if cached is not None and cached[:3] == stamp:
            return str(cached[3])
        digest = sha256_file(path)
        self._remember(rel, stamp, digest)
        return digest

    def remember_written(self, rel: str, digest: str) -> None:
        st = (self.root / rel).stat()
        self._remember(rel, [st.st_ino, st.st_size, st.st_mtime_ns], digest)

    def _remember(self, rel: str, stamp: list[Any], digest: str) -> None:
        self._stat_cache()[rel] = [*stamp, digest]
        self._stats_dirty = True

    def save(self) -> None:
        if self._stats_dirty and self._stats is not None:
            self.ensure()
            data = json.dumps(self._stats, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
            atomic_write(self.dir / STAT_CACHE, data, durable=False)
            self._stats_dirty = False

    # -- object cache: generated images by content, and which key made which object ---------------

    def object_path(self, sha256: str) -> Path:
        return self.dir / "objects" / sha256[:2] / sha256

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def put_object(self, data: bytes, *, durable: bool = False) -> str:
        """Cache `data`. Not fsynced unless `durable` (a paid image, whose journal entry goes
        next): the rest can be rebuilt, and restores check the digest first."""
        self.ensure()
        digest = sha256_bytes(data)
        path = self.object_path(digest)
        if not path.is_file():
            atomic_write(path, data, durable=durable)
        elif durable:
            fsync_file(path)  # cached earlier without fsync: make those bytes durable now
        return digest

    def stage_object(self, sha256: str, dest: Path) -> Path | None:
        """A copy of a cached object staged beside `dest` (see fsutil.install), if the object is
        intact; a damaged one is dropped and None returned."""
        source = self.object_path(sha256)
        try:
            intact = sha256_file(source) == sha256
        except OSError:
            return None
        if not intact:
            source.unlink(missing_ok=True)
            return None
        return stage_copy(source, dest)

    def key_record(self, key: str) -> dict[str, Any] | None:
        """What the object cache holds for a content key, if its object is still there."""
        try:
            record: dict[str, Any] = json.loads((self.dir / "keys" / f"{key}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return record if self.has_object(str(record.get("sha256"))) else None

    def put_key_record(self, key: str, record: dict[str, Any], *, durable: bool = False) -> None:
        self.ensure()
        data = json.dumps(record, sort_keys=True, allow_nan=False).encode()
        atomic_write(self.dir / "keys" / f"{key}.json", data, durable=durable)

    # -- seeds drawn for assets that have none in the manifest ------------------------------------

    def pinned_seeds(self) -> dict[str, int]:
        try:
            seeds: dict[str, int] = json.loads((self.dir / "seeds.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return seeds

    def pin_seed(self, asset_id: str, seed: int) -> None:
        """Record a drawn seed before it is used: if the build dies after paying, the next build
        draws nothing new, finds the same key and so the same journaled task."""
        self.ensure()
        seeds = self.pinned_seeds()
        seeds[asset_id] = seed
        atomic_write(self.dir / "seeds.json", json.dumps(seeds, sort_keys=True, allow_nan=False).encode())

    # -- journal of submitted paid tasks ---------------------------------------------------------

    def _journal_path(self, key: str) -> Path:
        return self.dir / "journal" / f"{key}.json"

    def journal_get(self, key: str) -> JournalEntry | None:
        try:
            raw = json.loads(self._journal_path(key).read_bytes())
            return JournalEntry(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def journal_put(self, entry: JournalEntry) -> None:
        self.ensure()
        # fsynced: the record must be on disk before we wait on a task we are paying for.
        atomic_write(
            self._journal_path(entry.key), json.dumps(asdict(entry), sort_keys=True, allow_nan=False).encode()
        )

    def check_journal_writable(self) -> None:
        """Before the first paid submission: a journal that cannot be written (a full disk, a
        read-only mount) would leave paid tasks unrecorded, so nothing is submitted."""
        self.ensure()
        folder = self.dir / "journal"
        try:
            probe_writable(folder)
        except OSError as exc:
            raise FlexforgeError(
                f"cannot write to {self.dir.name}/journal ({exc.strerror or type(exc).__name__}): "
                "flexforge records each paid task there before waiting on it, so it submits "
                "nothing; free some space or make the folder writable, then build again"
            ) from None

    def journal_remove(self, key: str) -> None:
        self._journal_path(key).unlink(missing_ok=True)

    def journal_entries(self) -> list[JournalEntry]:
        folder = self.dir / "journal"
        entries = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            entry = self.journal_get(path.stem)
            if entry is not None:
                entries.append(entry)
        return entries

    # -- ledger of spend -------------------------------------------------------------------------

    def ledger_append(self, record: dict[str, Any]) -> None:
        self.ensure()
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        fd = os.open(self.dir / "ledger.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def ledger(self) -> list[dict[str, Any]]:
        try:
            lines = (self.dir / "ledger.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash
        return records

    # -- one build at a time ---------------------------------------------------------------------

    @contextmanager
    def build_lock(self, wait: float = 30.0, on_wait: Any = None) -> Iterator[None]:
        """Hold `.flexforge/build.lock`. An OS lock (flock): a killed holder releases it, so a
        stale lock never needs clearing by hand."""
        from filelock import FileLock, Timeout

        self.ensure()
        lock = FileLock(self.dir / "build.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise FlexforgeError(
                    f"another flexforge build holds {self.dir / 'build.lock'} "
                    f"(waited {wait:.0f} s); try again when it finishes"
                ) from None
        try:
            yield
        finally:
            lock.release()
