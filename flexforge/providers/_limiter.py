"""An adaptive cap on tasks in flight: halve on 429, creep back up on success (AIMD).

The API counts tasks in flight per account (24 for BFL), and other clients may share the account,
so the real headroom is only learnt from 429 answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class AdaptiveLimiter:
    def __init__(self, maximum: int, *, increase: float = 0.5) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self._limit = float(maximum)
        self._increase = increase
        self._in_use = 0
        # Bumped on every decrease: a 429 for a request sent before the latest decrease was
        # answered to the old, larger limit and must not halve the limit again.
        self._epoch = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.lowest = maximum  # the smallest limit reached, for logs and tests

    @property
    def limit(self) -> int:
        return max(1, math.floor(self._limit))

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self) -> int:
        """Wait for a free slot; returns the epoch the slot was granted in."""
        while self._in_use >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_use += 1
        return self._epoch

    def release(self) -> None:
        # Synchronous on purpose: it runs in `finally` blocks of cancelled tasks.
        self._in_use -= 1
        self._wake()

    def rate_limited(self, epoch: int) -> bool:
        """Record a 429 seen by a slot granted in `epoch`; True if it lowered the limit."""
        if epoch != self._epoch:
            return False
        self._epoch += 1
        self._limit = max(1.0, self._limit / 2)
        self.lowest = min(self.lowest, self.limit)
        return True

    def succeeded(self) -> None:
        if self._limit < self.maximum:
            self._limit = min(float(self.maximum), self._limit + self._increase)
            self._wake()

    def _wake(self) -> None:
        # Every waiter re-checks the limit itself, so a waiter cancelled after being woken
        # cannot strand a free slot.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        held = Slot(self)
        await held.take()
        try:
            yield held
        finally:
            held.give_back()


class Slot:
    """One task's place in flight; it can step out while waiting after a 429."""

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter = limiter
        self._held = False
        self.epoch = 0

    async def take(self) -> None:
        self.epoch = await self._limiter.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release()

    def rate_limited(self) -> bool:
        """Report a 429 to the limiter; True if it lowered the limit."""
        return self._limiter.rate_limited(self.epoch)

    async def pause(self, delay: float) -> None:
        """Leave the slot for `delay`, then queue for one again under the current limit."""
        self.give_back()
        await asyncio.sleep(delay)
        await self.take()
