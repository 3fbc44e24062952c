"""Never paying twice across machines: a lease on a content key in the team remote, around one paid task.

Before a runner pays for a key it creates `leases/<key>.json` create-only; once the API answers,
the task id and polling URL go into it (compare-and-swap on its version); when the image is
pushed, the lease is released. Another runner that finds a lease with a task id polls that task
instead of paying; one that finds a live lease with no task id yet waits for it; one that finds an
expired lease takes it over (compare-and-swap), resuming its task if it names one. What a lease
cannot cover: a kill between the API accepting a task and the lease write (like the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flexforge.providers import JournalEntry
from flexforge.remote import FsspecRemote, Lease, env_seconds, holder_id, lease_ttl
from flexforge.store import KeyRecord

LEASE_POLL_ENV = "FLEXFORGE_LEASE_POLL"
DEFAULT_LEASE_POLL = 1.0  # seconds between looks at another runner's lease


@dataclass(slots=True)
class Claim:
    """What a runner may do about one key: pay (holding `lease`), resume `resume` (another
    runner's task, free), or take the finished object `sha256` from the remote."""

    lease: Lease | None = None
    resume: JournalEntry | None = None
    sha256: str | None = None
    followed: bool = False  # resuming a task another runner paid for, who is still alive
    theirs: Lease | None = None  # the lease followed: cleared once its image is pushed


class Team:
    """The build's use of a team remote: objects pushed after each image, leases around paid tasks."""

    def __init__(self, remote: FsspecRemote, log: Callable[[str], None]) -> None:
        self.remote = remote
        self.log = log
        self.holder = holder_id()
        self.ttl = lease_ttl()
        self.poll = env_seconds(LEASE_POLL_ENV, DEFAULT_LEASE_POLL, 0.01, 3600.0)
        self.leasing = False
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, Lease] = {}
        # Renewals (worker threads) and task records (the event loop) change one lease in turn:
        # each write needs the version the other just made.
        self._writing = threading.Lock()
        self._recording: dict[str, asyncio.Future[None]] = {}  # task ids on their way into leases

    def start(self) -> None:
        """Probe the backend once: leases only where conditional writes are honoured."""
        if self.remote.read_only:
            return
        try:
            reason = self.remote.probe()
        except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
            reason = f"the remote could not be reached ({exc})"
        if reason is not None:
            self.log(
                f"remote {self.remote.url}: no leases ({reason}); images are still shared, but two "
                "machines building the same new image at once may both pay for it"
            )
            return
        self.leasing = True

    # -- before paying ------------------------------------------------------------------------

    async def claim(self, key: str, asset: str, provider: str) -> Claim:
        """Wait until this runner may pay for `key`, resume a task, or take the finished object."""
        if not self.leasing:
            return Claim()
        while True:
            # No look for the finished object first: the plan listed the remote a moment ago, and
            # the look after winning the lease (below) catches one pushed since.
            mine = Lease(key, self.holder, time.time() + self.ttl, asset, provider)
            got = await asyncio.to_thread(self.remote.lease_acquire, mine)
            if got is not None:
                return await self._hold_unless_made(got)
            theirs = await asyncio.to_thread(self.remote.lease_read, key)
            if theirs is None:
                continue  # released between our create and our read: the object is there now
            if theirs.live():
                if theirs.task_id and theirs.polling_url:
                    self.log(f"{asset}: another runner ({theirs.holder}) is making it; polling its task")
                    return Claim(resume=_entry(theirs), followed=True, theirs=theirs)
                await asyncio.sleep(min(self.poll, max(0.0, theirs.expires_at - time.time()) + 0.01))
                continue
            new = Lease(key, self.holder, time.time() + self.ttl, asset, provider)
            if theirs.task_id and theirs.polling_url:
                # Keep its task in the lease: a runner dying after this still leaves it for the next.
                new = Lease(
                    key,
                    self.holder,
                    new.expires_at,
                    asset,
                    theirs.provider or provider,
                    theirs.task_id,
                    theirs.polling_url,
                    theirs.cost_credits,
                    theirs.submitted_at,
                )
            taken = await asyncio.to_thread(self.remote.lease_takeover, theirs, new)
            if taken is None:
                continue  # another runner took it over first: look again
            self.log(f"{asset}: took over an expired lease from {theirs.holder}")
            claim = await self._hold_unless_made(taken)
            if taken.task_id and claim.lease is not None:
                claim.resume = _entry(taken)
            return claim

    async def _hold_unless_made(self, lease: Lease) -> Claim:
        """Hold a lease just won, unless the key's object appeared meanwhile: the last holder
        may have pushed and released between our first look and our write (regression: 8 of 50
        keys paid twice in a race before this second look)."""
        try:
            sha = await asyncio.to_thread(self.remote.key_object, lease.key)
        except Exception:  # each backend raises its own kinds; holding the lease is the safe side
            sha = None
        if sha is not None:
            await asyncio.to_thread(self.remote.lease_release, lease)
            return Claim(sha256=sha)
        return self._hold(lease)

    def _hold(self, lease: Lease) -> Claim:
        self._held[lease.key] = lease
        self._renewals[lease.key] = asyncio.get_running_loop().create_task(self._renew(lease.key))
        return Claim(lease=lease)

    async def _renew(self, key: str) -> None:
        """Keep a held lease live while its task runs; stop if someone took it over."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                held = await asyncio.to_thread(self._update, key, expires_at=time.time() + self.ttl)
            except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
                self.log(f"lease on {key[:12]}: renewal failed ({exc}); will try again")
                continue
            if not held:
                self.log(f"lease on {key[:12]} was taken over by another runner; it polls the same task")
                return

    def _update(self, key: str, **changes: Any) -> bool:
        """Change a held lease; False when it is no longer ours (taken over, or released)."""
        with self._writing:
            lease = self._held.get(key)
            if lease is None:
                return False
            updated = self.remote.lease_update(lease, **changes)
            if updated is None:
                del self._held[key]
                return False
            self._held[key] = updated
            return True

    # -- while paying -------------------------------------------------------------------------

    def submitted(self, key: str, task_id: str, polling_url: str, cost_credits: float | None) -> None:
        """The API accepted the task: write it into the lease now, so that any runner can
        resume it if this one dies. Started at once on a worker thread (the journal's fsync has
        already happened on this one): waiting here would stall every other task's polls for a
        round trip to the store (regression: a 4-shard build took 3x as long with a remote)."""

        def record() -> None:
            try:
                self._update(
                    key,
                    task_id=task_id,
                    polling_url=polling_url,
                    cost_credits=cost_credits,
                    submitted_at=time.time(),
                    expires_at=time.time() + self.ttl,
                )
            except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
                self.log(f"could not record task {task_id} in the remote lease ({exc}); the journal has it")

        self._recording[key] = asyncio.get_running_loop().run_in_executor(None, record)

    # -- after paying -------------------------------------------------------------------------

    async def push(self, key: str, data: bytes, record: KeyRecord) -> bool:
        """Share a finished image, with its key record (one write on S3)."""
        if self.remote.read_only:
            return False
        try:
            await asyncio.to_thread(self.remote.put, key, data, dataclasses.asdict(record))
        except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
            self.log(f"could not push {key[:12]} to {self.remote.url} ({exc}); it stays local")
            return False
        return True

    async def clear(self, claim: Claim | None) -> None:
        """After pushing the image of a task followed from another runner's lease, remove that
        lease if it is unchanged (its holder may have died; alive, it finds its lease gone and
        simply goes on). Else it would sit in the remote until it expired."""
        if claim is None or claim.theirs is None or self.remote.read_only:
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.remote.lease_release, claim.theirs)

    async def release(self, key: str, *, keep_task: bool = False) -> None:
        """Give the key up: after its image is pushed, or when its task failed for good. With
        `keep_task` (interrupted after submitting) the lease stays for the next runner to resume."""
        renewal = self._renewals.pop(key, None)
        if renewal is not None:
            renewal.cancel()
        recording = self._recording.pop(key, None)
        if recording is not None:
            await recording  # the release must see the version that names the task
        await asyncio.to_thread(self._release, key, keep_task)

    def _release(self, key: str, keep_task: bool) -> None:
        with self._writing:
            lease = self._held.pop(key, None)
            if lease is None or (keep_task and lease.task_id):
                return
            with contextlib.suppress(Exception):
                self.remote.lease_release(lease)

    def release_now(self, key: str) -> None:
        """Interrupted before submitting: drop the lease at once so that others need not wait for
        it to expire. Synchronous, since the event loop is going away."""
        renewal = self._renewals.pop(key, None)
        if renewal is not None:
            renewal.cancel()
        if key in self._recording:
            return  # a task id is on its way into the lease: it stays for the next runner
        with contextlib.suppress(Exception):
            self._release(key, True)

    def close(self) -> None:
        for renewal in self._renewals.values():
            renewal.cancel()
        self._renewals.clear()


def _entry(lease: Lease) -> JournalEntry:
    """A lease's task as a journal entry, for the provider's resume path, which checks the
    polling URL against its API's hosts before any key is sent (the lease is untrusted)."""
    assert lease.task_id is not None and lease.polling_url is not None
    return JournalEntry(
        lease.asset,
        lease.key,
        lease.provider,
        lease.task_id,
        lease.polling_url,
        lease.submitted_at or 0.0,
        lease.cost_credits,
    )
