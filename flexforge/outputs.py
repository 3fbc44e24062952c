"""Recording outputs: the one transaction that puts an asset's bytes at its output path and its
entry in the lock, in an order a crash cannot turn into a lock naming a file that is not there.

The engine (generated, rendered and restored images) and `accept` call the same `record`; this
module alone stages and renames outputs (or, for restores, writes them in place under an intent
record), decides when the lock is written and what is fsynced first, and keeps the stat cache in
step with what it wrote. See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flexforge import gitblobs
from flexforge.errors import FlexforgeError
from flexforge.fsutil import (
    NotRegularFile,
    fsync_dir,
    install,
    is_temp,
    open_folder,
    overwrite,
    remove_stale_temps,
    stage_bytes,
    sync_files,
)
from flexforge.keys import ContentKey
from flexforge.lockfile import Lock, LockChangedError, LockEntry, stamp
from flexforge.manifest import Asset
from flexforge.noop import file_stamp
from flexforge.store import KeyRecord, Store

LOCK_SAVE_INTERVAL = 0.25  # seconds


@dataclass(frozen=True, slots=True)
class _Staged:
    temp: Path  # a temp file beside the output, or the output itself when written in place
    rel: str  # root-relative output path
    sha256: str
    durable: bool  # fsynced when staged
    in_place: bool = False


@dataclass(frozen=True, slots=True)
class _Batch:
    """One lock write: the outputs it renames into place, the entries they replaced (put back if
    it fails), the lock's bytes as rendered when it began, and a reason not to write at all."""

    staged: dict[str, _Staged]
    replaced: dict[str, LockEntry | None]
    data: bytes
    problem: LockChangedError | None = None


@dataclass(slots=True)
class Flushed:
    """What one flush could not record: each asset with why, whether that stops the build
    (`fatal`: the lock itself could not be written), and a reason to stop starting new work."""

    failed: dict[str, str] = field(default_factory=dict)
    fatal: bool = False
    stop: str | None = None


class Outputs:
    """Outputs recorded since the last lock write, and the writes that make them true together:
    the lock first (its bytes fsynced), then the renames back to back, then one fsync per folder.
    A kill before the renames leaves files and lock as they were; after them, in step."""

    def __init__(
        self,
        lock: Lock,
        store: Store,
        *,
        watch: tuple[Path, str] | None = None,
        on_flushed: Callable[[Flushed], None] | None = None,
    ) -> None:
        self.lock = lock
        self.store = store
        self._watch = watch  # the manifest and its label: no lock is written over a changed one
        self._watch_stamp = stamp(watch[0]) if watch is not None else None
        self._on_flushed = on_flushed
        self._staged: dict[str, _Staged] = {}
        # What the lock said of each asset recorded since the last write, put back if its
        # rename fails: the lock never names a file that is not there.
        self._replaced: dict[str, LockEntry | None] = {}
        self.made_here: set[str] = set()  # assets whose output this run wrote
        self._saved_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # The intent record (out -> stamp before any in-place write), as written by `intend`.
        self._writing: dict[str, list[int] | None] | None = None
        self._in_place: frozenset[str] = frozenset()  # outputs this run may write in place
        self._settled: set[str] = set()  # written in place, and named by a lock write since
        self._folders: dict[Path, int | None] = {}  # output folders opened for in-place writes
        self._folders_mutex = threading.Lock()
        # Held by each in-place write, and by `close` while it shortens the intent record: a
        # worker still writing when the build stops finishes first, or stages instead.
        self._in_place_mutex = threading.Lock()
        self._closed = False
        self._blobs: dict[Path, str] = {}  # staged file -> git blob id of its bytes
        gitblobs.learn({a: e.git_blobs for a, e in lock.entries.items()})
        # In a build, the file work of a lock write (fsyncs, renames) runs on a thread of its
        # own, one write at a time, while the event loop goes on polling and submitting.
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: tuple[concurrent.futures.Future[dict[str, str]], _Batch] | None = None

    def stage(self, dest: Path, data: bytes, *, durable: bool = True, blob: str | None = None) -> Path:
        """`data` written beside `dest`, for `record` to rename into place with the next lock
        write. Not `durable`: fsynced at that write instead, together with the others (bytes that
        are free to fetch again, such as a restore: a thousand cost one sync, not a thousand).
        Safe to call from worker threads."""
        staged = stage_bytes(dest, data, durable=durable)
        self._blobs[staged] = blob or gitblobs.blob_id(data)  # one dict store: safe across threads
        return staged

    def intend(self, outs: Iterable[str]) -> None:
        """Say which outputs this run may write in place: restores, whose bytes are free to fetch
        again. Recorded with each file's stamp and fsynced before the first is touched, so that
        a kill mid-write leaves a torn file the next plan restores again instead of calling it
        edited by hand. Entries of an earlier interrupted run keep their first stamp. A record
        that cannot be written (a full disk) leaves every output to a temp file and a rename."""
        wanted = list(dict.fromkeys(outs))
        if not wanted:
            return
        root = self.store.root
        try:
            previous = self.store.writing()
            record = {o: b for o, b in previous.items() if file_stamp(str(root / o)) != b}
            for out in wanted:
                record.setdefault(out, file_stamp(str(root / out)))
            self.store.set_writing(record)
        except (OSError, FlexforgeError):
            return
        self._writing = record
        self._in_place = frozenset(wanted)

    def restore(self, out: str, dest: Path, data: bytes, blob: str | None = None) -> Path:
        """Restored bytes for the output `out` at `dest`: written there in place when `intend`
        listed it and the manifest and lock are still those this build read (after a `git
        checkout` meanwhile they are staged, and the lock write then refuses them), else staged
        beside it without fsync. Returns what `record` takes. Safe to call from worker threads.
        `blob`: the bytes' git blob id, when git named them (else computed here)."""
        if out in self._in_place:
            blob = blob or gitblobs.blob_id(data)
            with self._in_place_mutex:
                if not self._closed and not self._switched():
                    overwrite(dest, data, folder=self._folder(dest.parent))
                    self._blobs[dest] = blob
                    return dest
        return self.stage(dest, data, durable=False, blob=blob)

    def _folder(self, folder: Path) -> int | None:
        """A descriptor on `folder` as it really is now (checked to be inside the project root),
        opened once without following links: writes through it stay inside the root even if a
        folder on the way is swapped for a link later in the build."""
        with self._folders_mutex:
            if folder in self._folders:
                return self._folders[folder]
            root = os.path.realpath(self.store.root)
            rel = os.path.relpath(os.path.realpath(folder), root)
            if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
                raise NotRegularFile(errno.EXDEV, "leads outside the project root", str(folder))
            parts = () if rel == os.curdir else tuple(rel.split(os.sep))
            fd = self._folders[folder] = open_folder(Path(root), parts)
            return fd

    def _switched(self) -> bool:
        """Whether the manifest or the lock changed on disk since this build read them."""
        watched = self._watch is not None and stamp(self._watch[0]) != self._watch_stamp
        return watched or self.lock.changed_on_disk()

    def remove_stale_temps(self, outs: list[str]) -> None:
        """A build killed mid-write leaves a temp file beside an output or the lock, in folders
        users commit: removed before this one stages anything."""
        folders: dict[Path, set[str]] = {self.lock.path.parent: {self.lock.path.name}}
        for out in outs:
            path = self.store.root / out
            folders.setdefault(path.parent, set()).add(path.name)
        for folder, names in folders.items():
            remove_stale_temps(folder, names)

    def record(
        self,
        asset: Asset,
        key: ContentKey,
        seed: int,
        generator: str,
        record: KeyRecord,
        staged: Path | None = None,
        *,
        durable: bool = True,
        urgent: bool = True,
    ) -> None:
        """`asset`'s output is now `record.sha256` (`record.size` bytes), made for `key`: staged at
        `staged` by `stage` or `restore`, or already at its output path (None). `urgent` asks for
        a lock write soon (a paid image); otherwise it goes with the next write or the last (a restore: a
        build killed before then restores it again, for free)."""
        if staged is not None and (blob := self._blobs.pop(staged, None)) is not None:
            gitblobs.note(record.sha256, blob)
        entry = LockEntry(
            key=key.key,
            parts=key.parts,
            seed=seed,
            model=asset.model,
            generator=generator,
            provider=record.provider,
            out=asset.out,
            sha256=record.sha256,
            size=record.size,
            task_id=record.task_id,
            cost_usd=record.cost_usd,
            git_blobs=gitblobs.pairs_for([record.sha256, *key.files]) or None,
        )
        previous = self.lock.set_entry(asset.id, entry)
        self._replaced.setdefault(asset.id, previous)
        if staged is not None:
            in_place = not is_temp(staged)
            self._staged[asset.id] = _Staged(staged, asset.out, record.sha256, durable, in_place)
            self.made_here.add(asset.id)
        elif asset.written:
            self.store.remember_written(asset.out, record.sha256)
        else:  # a candidate kept in the cache only: dependents read it there
            self.made_here.add(asset.id)
        if urgent:
            self._flush_soon()

    def drop(self, asset_id: str) -> None:
        """Forget an asset the manifest no longer has (written with the next flush)."""
        self.lock.drop(asset_id)

    def _flush_soon(self) -> None:
        """Flush at most a few times a second: rewriting a 10,000-entry lock after every draft
        render would make a build quadratic. What finished since the last write is already in the
        object cache, so an interrupted build restores it for free. Outside an event loop (a
        command such as `accept`), the caller flushes. In a build the flush's file work goes to
        a thread (see _start): fsyncs on the event loop held up every task's polls and
        submissions, tens of milliseconds a few times a second on a busy disk."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None or self._inflight is not None:
            return  # a write is due, or under way (the next follows it: see _written)
        wait = LOCK_SAVE_INTERVAL - (time.monotonic() - self._saved_at)
        if wait <= 0:
            self._start(loop)
        else:
            self._timer = loop.call_later(wait, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin a flush: what it writes is settled here, on the loop (the staged outputs, the
        lock's bytes); the writes themselves, in flush's order, on the writer thread."""
        self._timer = None
        batch = self._take()
        self._saved_at = time.monotonic()
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "flexforge-lock")
        future = self._writer.submit(self._write, batch)
        self._inflight = (future, batch)
        future.add_done_callback(lambda _: _call_soon(loop, self._written, future))

    def _written(self, future: concurrent.futures.Future[dict[str, str]]) -> None:
        """Back on the loop: the write's outcome recorded, and the next write started if more
        was recorded meanwhile."""
        if self._inflight is None or self._inflight[0] is not future:
            return  # already settled (close waited for it)
        batch = self._inflight[1]
        self._inflight = None
        self._settle(batch, future)
        if self._staged or self._replaced:
            self._flush_soon()

    async def idle(self) -> None:
        """Until no lock write is under way on the writer thread (one due later may follow)."""
        while self._inflight is not None:
            future = self._inflight[0]
            with contextlib.suppress(Exception):  # settled, and reported, by _written
                await asyncio.wrap_future(future)
            await asyncio.sleep(0)

    def flush(self) -> Flushed:
        """Write the lock, then rename the outputs it describes into place; only the renames
        themselves are in between. Outputs staged without fsync are made durable first, at once:
        a lock naming bytes that a power cut then loses would read as a hand edit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wait_for_writer()
        batch = self._take()
        self._saved_at = time.monotonic()
        future: concurrent.futures.Future[dict[str, str]] = concurrent.futures.Future()
        try:
            future.set_result(self._write(batch))
        except (LockChangedError, OSError) as exc:
            future.set_exception(exc)
        return self._settle(batch, future)

    def _wait_for_writer(self) -> None:
        """Let a lock write under way on the writer thread finish, and settle it here."""
        if self._inflight is None:
            return
        future, batch = self._inflight
        self._inflight = None
        concurrent.futures.wait([future])
        self._settle(batch, future)

    def _take(self) -> _Batch:
        """What the next write covers, taken out of the pending state (the lock's bytes too: an
        orphan dropped changes them with nothing staged)."""
        staged, self._staged = self._staged, {}
        replaced, self._replaced = self._replaced, {}
        problem: LockChangedError | None = None
        try:
            self._check_watch()
        except LockChangedError as exc:
            problem = exc
        return _Batch(staged, replaced, self.lock.render(), problem)

    def _write(self, batch: _Batch) -> dict[str, str]:
        """The file work of one flush (any thread): non-durable outputs synced, the lock's bytes
        written and fsynced, then the renames back to back, so the gap between the lock and its
        files stays a few microseconds; each folder (the lock's too) is made durable once
        afterwards. Returns the assets whose rename failed, with why."""
        if batch.problem is not None:
            raise batch.problem
        sync_files([s.temp for s in batch.staged.values() if not s.durable])
        self.lock.write(batch.data, sync_folder=False)
        failed: dict[str, str] = {}
        folders = {self.lock.path.parent}
        for asset_id, s in batch.staged.items():
            if s.in_place:  # written at its path already, under the intent record
                continue
            path = self.store.root / s.rel
            try:
                install(s.temp, path, durable=False)
            except OSError as exc:
                failed[asset_id] = oserror(exc)
                s.temp.unlink(missing_ok=True)
                continue
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)
        return failed

    def _settle(self, batch: _Batch, future: concurrent.futures.Future[dict[str, str]]) -> Flushed:
        """On the thread that owns the lock's entries: what a write did, recorded and reported."""
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, OSError):
                reason = oserror(exc)
            elif isinstance(exc, LockChangedError):
                reason = str(exc)
            else:  # a bug: the lock is not known to be written, so nothing counts as recorded
                reason = f"internal error writing {self.lock.path.name}: {type(exc).__name__}: {exc}"
            for s in batch.staged.values():
                if not s.in_place:  # what was written in place stays listed in the intent record
                    s.temp.unlink(missing_ok=True)
            self._put_back(batch.replaced)
            return self._report(Flushed(dict.fromkeys(batch.replaced, reason), fatal=True, stop=reason))
        result = Flushed(future.result())
        for asset_id, s in batch.staged.items():
            if asset_id not in result.failed:
                self.store.remember_written(s.rel, s.sha256)
                if s.in_place:
                    self._settled.add(s.rel)
        if result.failed:
            # The lock already names these files: put their old entries back. Their images stay
            # cached (or in git) for the next build.
            self._put_back({a: batch.replaced.get(a) for a in result.failed})
            try:
                self._save_lock()
            except (LockChangedError, OSError) as exc:
                result.stop = f"cannot write {self.lock.path.name}: {exc}"
        return self._report(result)

    def close(self) -> Flushed:
        """The last flush (after the one under way, if any), and the stat cache saved with what
        was written."""
        result = self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        with self._in_place_mutex:
            self._closed = True
        self._forget_settled()
        self.store.save()
        with self._folders_mutex:
            for fd in self._folders.values():
                if fd is not None:
                    os.close(fd)
            self._folders.clear()
        return result

    def _forget_settled(self) -> None:
        """Shorten the intent record to the outputs still not in step with the lock: written in
        place and never named by a lock write (a failed one), or left torn by an earlier run
        this one did not restore. Removed when none are left."""
        record = self._writing if self._writing is not None else self.store.writing()
        if not record:
            return
        by_out = {e.out: e for e in self.lock.entries.values()}
        left: dict[str, list[int] | None] = {}
        for out, before in record.items():
            if out in self._settled or file_stamp(str(self.store.root / out)) == before:
                continue  # named by the lock now, or never touched
            entry = by_out.get(out)
            if entry is not None and self.store.digest(out) == entry.sha256:
                continue
            left[out] = before
        if left != record:
            # Kept when that fails: the next build finds the same files and shortens it then.
            with contextlib.suppress(OSError, FlexforgeError):
                self.store.set_writing(left)

    def _report(self, result: Flushed) -> Flushed:
        if self._on_flushed is not None and (result.failed or result.stop):
            self._on_flushed(result)
        return result

    def _put_back(self, replaced: dict[str, LockEntry | None]) -> None:
        for asset_id, previous in replaced.items():
            self.lock.put_back(asset_id, previous)

    def _save_lock(self, *, sync_folder: bool = True) -> None:
        self._check_watch()
        self.lock.save(sync_folder=sync_folder)

    def _check_watch(self) -> None:
        if self._watch is not None and stamp(self._watch[0]) != self._watch_stamp:
            raise LockChangedError(
                f"{self._watch[1]} changed on disk while this build ran (a `git checkout`?); "
                f"{self.lock.path.name} was left as it is. Run `flexforge build` again: finished "
                "images are cached"
            )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """From the writer thread: `callback` on the loop, unless the loop is gone (the build's
    close already settled that write itself)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def oserror(exc: OSError) -> str:
    """A failed write, for users: what went wrong and where."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"cannot write: {exc.strerror or exc}{where}"
