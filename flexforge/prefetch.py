"""Restoring many outputs from git history in one pass: a worker thread streams every planned
git restore's bytes (sources.Sources.fetch_many), verifies and stages each, while the build
runs; each restore then takes its staged file instead of asking git on its own.

A staged file nobody takes (the build stopped, or chose another source after all) is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flexforge.fsutil import is_temp
from flexforge.manifest import Asset
from flexforge.planner import Step
from flexforge.sources import GIT, Source, Sources

# Restores woken together: each wake of the event loop from this thread costs a write to its
# self-pipe and a GIL hand-off (0.1 ms each, 67 ms for 816 restores one by one), and a loop woken
# that often keeps the GIL busy while this thread waits for it after every system call. Woken
# when this many have arrived, or this long after the last wake, and at the end.
WAKE_BATCH = 64
WAKE_AFTER = 0.02  # seconds

# (staged file, None) or (None, why not); an exception is what staging raised (a full disk).
Fetched = tuple[Path | None, str | None] | BaseException
Stage = Callable[[Asset, bytes, str | None], Path]  # the asset, its bytes, their git blob id if known


class GitPrefetch:
    def __init__(self, sources: Sources, stage: Stage) -> None:
        self._sources = sources
        self._stage = stage
        self._mutex = threading.Lock()  # between the worker thread and the event loop
        self._ready: dict[str, Fetched | None] = {}
        self._wanted: dict[str, tuple[Source, asyncio.Future[None]]] = {}
        self._arrived: list[str] = []  # handed over, their restores not yet woken
        self._wake_pending = False
        self._woken_at = 0.0
        self._stopped = False
        self._worker: asyncio.Future[None] | None = None

    def start(self, steps: list[Step]) -> None:
        """Start streaming the git restores among `steps` (two or more: one gains nothing)."""
        todo = [s for s in steps if s.source is not None and s.source.kind == GIT]
        if len(todo) < 2:
            return
        loop = asyncio.get_running_loop()
        for step in todo:
            assert step.source is not None
            self._wanted[step.asset.id] = (step.source, loop.create_future())
        self._worker = loop.run_in_executor(None, self._run, todo, loop)

    async def take(self, asset: Asset, source: Source) -> tuple[Path | None, str | None] | None:
        """The staged file (or why there is none) for `asset` from `source`; None when it was not
        prefetched (another source than planned, or the stream gave up on it): fetch it then."""
        wanted = self._wanted.get(asset.id)
        if wanted is None or wanted[0] != source:
            return None
        await asyncio.shield(wanted[1])
        with self._mutex:
            fetched = self._ready.pop(asset.id, None)
        if isinstance(fetched, BaseException):
            raise fetched
        return fetched

    def _run(self, todo: list[Step], loop: asyncio.AbstractEventLoop) -> None:
        done: set[str] = set()
        try:
            pairs = [(s.source, s.asset) for s in todo if s.source is not None]
            with contextlib.closing(self._sources.fetch_many(pairs)) as stream:
                for step, (data, problem, blob) in zip(todo, stream, strict=True):
                    fetched: Fetched
                    try:
                        fetched = (
                            (self._stage(step.asset, data, blob), None)
                            if data is not None
                            else (None, problem)
                        )
                    except Exception as exc:  # a full disk, an output path turned into a link
                        fetched = exc
                    if not self._hand_over(step.asset.id, fetched, loop):
                        return
                    done.add(step.asset.id)
        finally:
            for asset_id in self._wanted.keys() - done:  # not fetched: each restore asks on its own
                self._hand_over(asset_id, None, loop)
            self._hand_over(None, None, loop)  # wake whatever still waits

    def _hand_over(
        self, asset_id: str | None, fetched: Fetched | None, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Give a result to the restore waiting for it (None: wake what has arrived); False once
        the build has stopped."""
        with self._mutex:
            if self._stopped:
                _discard(fetched)
                return False
            if asset_id is not None:
                self._ready[asset_id] = fetched
                self._arrived.append(asset_id)
            if self._wake_pending or not self._arrived:
                return True  # the loop has yet to wake the restores: this one goes with them
            now = time.monotonic()
            if asset_id is not None and len(self._arrived) < WAKE_BATCH and now - self._woken_at < WAKE_AFTER:
                return True  # woken with the next ones, or at the end
            self._wake_pending = True
            self._woken_at = now
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: close() removes what was staged
            return False
        return True

    def _wake(self) -> None:
        """On the loop: wake every restore whose file arrived since the last wake (one wake for
        many: a thousand restores need not each cost the loop a turn)."""
        with self._mutex:
            arrived, self._arrived = self._arrived, []
            self._wake_pending = False
        for asset_id in arrived:
            future = self._wanted[asset_id][1]
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        """Stop the stream, and remove every staged file no restore took."""
        with self._mutex:
            self._stopped = True
            left, self._ready = list(self._ready.values()), {}
        for fetched in left:
            _discard(fetched)


def _discard(fetched: Fetched | None) -> None:
    """Remove a staged temp file; an output written in place stays (the intent record lists it)."""
    if isinstance(fetched, tuple) and fetched[0] is not None and is_temp(fetched[0]):
        fetched[0].unlink(missing_ok=True)
