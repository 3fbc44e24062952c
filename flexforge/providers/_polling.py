"""When to look at a pending task again: learnt from the build's own tasks, bounded in polls a second.

Tasks of one build take much the same time, and each look that lands late adds to the build's
makespan (a `--jobs` place stays taken until the build sees Ready). So:

- Before any task has finished, each task is looked at every poll interval, its first look at
  a random moment within the first interval: together the first wave's tasks sample it finely,
  and the first Ready seen tells every other task (sleeping ones are woken) when to look.
- From then on a task sleeps until just before it is likely due (the median elapsed time at
  which finished tasks were last seen Pending), then looks every `fine` seconds (a fiftieth of
  the expected duration, at least 10 ms, at most the poll interval) until the latest duration
  seen, then at the poll interval again (backing off for slow tasks, as the caller does).
- Whatever the schedule asks, all the build's tasks together make on average at most `rate`
  polls a second, in bursts of at most `rate` (FLEXFORGE_POLL_RATE, default 50: about what BFL's
  own sample code, polling each task every 0.5 s, makes with the account's 24 tasks in flight),
  and a Retry-After on an answer is honoured by the caller before any look at that task.

Durations are learnt from both sides: the elapsed time of a task's last Pending look (a lower
bound) and of its Ready look (an upper bound). Looking first at the lower bounds keeps the
estimate honest when tasks get faster; the fine looks after it keep lateness to `fine`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

DEFAULT_POLL_RATE = 50  # polls a second, for all of a build's tasks together
FINE_FRACTION = 0.02  # of the expected duration: the step between looks near it
MIN_FINE = 0.01  # seconds
HISTORY = 32  # finished tasks the estimate is drawn from


class PollTimer:
    """Shared by every task of one provider (one build)."""

    def __init__(self, rate: int = DEFAULT_POLL_RATE) -> None:
        self.rate = max(1, rate)
        self._lows: deque[float] = deque(maxlen=HISTORY)  # elapsed at a finished task's last Pending
        self._highs: deque[float] = deque(maxlen=HISTORY)  # elapsed at its Ready look
        self._tokens = float(self.rate)  # polls that may start now (see turn)
        self._filled = time.monotonic()
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._first_look = 0.0  # elapsed time of a new task's first look, once something finished

    # -- learning --------------------------------------------------------------------------------

    def finished(self, pending: float | None, ready: float) -> None:
        """A task submitted in this build was seen Ready `ready` seconds after it was submitted,
        and last seen Pending at `pending`. None: its first look was already Ready, which says
        only that the first look is late enough; the next tasks look a little earlier than it,
        lest the estimate stay late when tasks get faster. (Not earlier than the Ready look
        itself: a look made late by a busy machine must not push the estimate later.)"""
        fine = self.fine(ready)
        if pending is None:
            pending = (min(ready, self._first_look) if self._highs else ready) - 2 * fine
        low = pending
        self._lows.append(max(0.0, min(low, ready)))
        self._highs.append(ready)
        before = self._first_look
        self._first_look = _median(self._lows)
        if not before or self._first_look < before - self.fine():
            self._wake()  # the first estimate, or a much earlier one: sleepers look again

    def fine(self, expected: float | None = None) -> float:
        if expected is None:
            expected = _median(self._highs) if self._highs else 0.0
        return max(MIN_FINE, expected * FINE_FRACTION)

    # -- scheduling ------------------------------------------------------------------------------

    def wait(self, elapsed: float, interval: float, *, first: bool = False) -> float:
        """Seconds until a task `elapsed` seconds old should be looked at; `first` for a newly
        submitted task's first look."""
        if not self._highs:
            return random.uniform(0.0, interval) if first else interval
        fine = min(interval, self.fine())
        if elapsed < self._first_look:
            return self._first_look - elapsed
        if elapsed < max(self._highs) + fine:
            return fine
        return interval

    async def sleep(self, delay: float) -> bool:
        """Sleep `delay` seconds; True if woken early because the estimate moved."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(delay, _settle, woken, False)
        self._sleepers.add(woken)
        try:
            return await woken
        finally:
            timer.cancel()
            self._sleepers.discard(woken)

    def _wake(self) -> None:
        for sleeper in list(self._sleepers):
            _settle(sleeper, True)

    def turn(self) -> float:
        """Take one poll's token: seconds to wait for it. A bucket of `rate` tokens, refilled at
        `rate` a second: bursts of up to `rate` polls (a wave of tasks all due at once), and on
        average no more than `rate` a second. Tokens are handed out in order of asking."""
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        self._tokens -= 1.0  # below zero: owed, and paid back by waiting
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
