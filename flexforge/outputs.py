"""Recording outputs: the one transaction that puts an asset's bytes at its output path and its
entry in the lock, in an order a crash cannot turn into a lock naming a file that is not there.

The engine (generated, rendered and restored images) and `accept` call the same `record`; this
module alone stages and renames outputs, decides when the lock is written and what is fsynced
first, and keeps the stat cache in step with what it wrote. See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flexforge.fsutil import fsync_dir, install, remove_stale_temps, stage_bytes, sync_files
from flexforge.keys import ContentKey
from flexforge.lockfile import Lock, LockChangedError, LockEntry, stamp
from flexforge.manifest import Asset
from flexforge.store import KeyRecord, Store

LOCK_SAVE_INTERVAL = 0.25  # seconds


@dataclass(frozen=True, slots=True)
class _Staged:
    temp: Path
    rel: str  # root-relative output path
    sha256: str
    durable: bool  # fsynced when staged


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
        # In a build, the file work of a lock write (fsyncs, renames) runs on a thread of its
        # own, one write at a time, while the event loop goes on polling and submitting.
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._writing: tuple[concurrent.futures.Future[dict[str, str]], _Batch] | None = None

    @staticmethod
    def stage(dest: Path, data: bytes, *, durable: bool = True) -> Path:
        """`data` written beside `dest`, for `record` to rename into place with the next lock
        write. Not `durable`: fsynced at that write instead, together with the others (bytes that
        are free to fetch again, such as a restore: a thousand cost one sync, not a thousand).
        Safe to call from worker threads."""
        return stage_bytes(dest, data, durable=durable)

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
        `staged` by `stage`, or already at its output path (None). `urgent` asks for a lock write
        soon (a paid image); otherwise it goes with the next write or the last (a restore: a
        build killed before then restores it again, for free)."""
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
        )
        previous = self.lock.set_entry(asset.id, entry)
        self._replaced.setdefault(asset.id, previous)
        if staged is not None:
            self._staged[asset.id] = _Staged(staged, asset.out, record.sha256, durable)
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
        if self._timer is not None or self._writing is not None:
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
        self._writing = (future, batch)
        future.add_done_callback(lambda _: _call_soon(loop, self._written, future))

    def _written(self, future: concurrent.futures.Future[dict[str, str]]) -> None:
        """Back on the loop: the write's outcome recorded, and the next write started if more
        was recorded meanwhile."""
        if self._writing is None or self._writing[0] is not future:
            return  # already settled (close waited for it)
        batch = self._writing[1]
        self._writing = None
        self._settle(batch, future)
        if self._staged or self._replaced:
            self._flush_soon()

    async def idle(self) -> None:
        """Until no lock write is under way on the writer thread (one due later may follow)."""
        while self._writing is not None:
            future = self._writing[0]
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
        if self._writing is None:
            return
        future, batch = self._writing
        self._writing = None
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
                s.temp.unlink(missing_ok=True)
            self._put_back(batch.replaced)
            return self._report(Flushed(dict.fromkeys(batch.replaced, reason), fatal=True, stop=reason))
        result = Flushed(future.result())
        for asset_id, s in batch.staged.items():
            if asset_id not in result.failed:
                self.store.remember_written(s.rel, s.sha256)
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
        self.store.save()
        return result

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
