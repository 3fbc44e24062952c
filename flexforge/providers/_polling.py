"""When to look at a pending task again: learnt from the build's own tasks, bounded in polls a second.

Tasks of one build take much the same time, and each look that lands late adds to the build's
makespan (a `--jobs` place stays taken until the build sees Ready). So:

- Before any task has finished, each task is looked at every poll interval, its first look at
  a random moment within the first interval: together the first wave's tasks sample it finely,
  and the first Ready seen tells every other task (sleeping ones are woken) when to look.
- From then on a task sleeps until it is likely due, then looks every `fine` seconds (a hundredth
  of the expected duration, at least 10 ms, at most the poll interval) until the latest duration
  seen, then at the poll interval again (backing off for slow tasks, as the caller does). A task
  still Pending at the first look, made in the middle of a tight bracket (below), is looked at
  next at the bracket's top, when that comes sooner than a fine step.
- Whatever the schedule asks, all the build's tasks together make on average at most `rate`
  polls a second, in bursts of at most `rate` (FLEXFORGE_POLL_RATE, default 50: about what BFL's
  own sample code, polling each task every 0.5 s, makes with the account's 24 tasks in flight),
  and a Retry-After on an answer is honoured by the caller before any look at that task.

A build starts knowing nothing of this run's tasks, and its first wave (or a chain's first link)
used to be looked at only every poll interval, late by up to that much. So the duration learnt
by the last build against the same provider is kept in the user cache (`task-durations.json`) and
given to the next one as a prior: until a task of its own has finished, a task is first looked at
just before that duration, then every `fine` step to a quarter past it, then at the interval.
A wrong prior costs a few looks, then this build's own tasks take over.

Durations are learnt from both sides: the elapsed time of a task's last Pending look (a lower
bound) and of its Ready look (an upper bound). When tasks take much the same time, a tight lower
bound (the upper quartile of the lower ones) sits below a tight upper bound (the lower quartile
of the upper ones), and the first look goes halfway between: each look either finds the task
Ready or narrows the bracket, so within a few tasks they are seen about `fine` after they are
due, with one or two looks each (the rate bound below leaves about two a task when 24 one-second
tasks are in flight, so looks spent early are looks missing late). When durations vary more than
that, the brackets overlap and the first look is at the median lower bound, as cautious as
before. A task found Ready at its first look adds a lower bound a little before that look, so
the estimate keeps moving earlier when tasks get faster.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import deque

DEFAULT_POLL_RATE = 50  # polls a second, for all of a build's tasks together
FINE_FRACTION = 0.01  # of the expected duration: the step between looks near it
MIN_FINE = 0.01  # seconds
HISTORY = 32  # finished tasks the estimate is drawn from
PRIOR_FILE = "task-durations.json"  # in the user cache: provider -> seconds its tasks took
PRIOR_SPAN = 1.25  # with a prior only, fine looks run to this multiple of it
MAX_PRIOR = 3600.0
TIGHT = 0.25  # the quartile of the bounds that makes the bracket: one in four may be an outlier


class PollTimer:
    """Shared by every task of one provider (one build)."""

    def __init__(self, rate: int = DEFAULT_POLL_RATE, prior: float | None = None) -> None:
        self.rate = max(1, rate)
        self.prior = prior  # seconds the last build's tasks took (see the module's docstring)
        self._lows: deque[float] = deque(maxlen=HISTORY)  # elapsed at a finished task's last Pending
        self._highs: deque[float] = deque(maxlen=HISTORY)  # elapsed at its Ready look
        self._tokens = float(self.rate)  # polls that may start now (see turn)
        self._filled = time.monotonic()
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._first_look = 0.0  # elapsed time of a new task's first look, once something finished
        self._top = 0.0  # the bracket's top, when it is one: a task looked at before is due by then

    # -- learning --------------------------------------------------------------------------------

    def finished(self, pending: float | None, ready: float) -> None:
        """A task submitted in this build was seen Ready `ready` seconds after it was submitted,
        and last seen Pending at `pending`. None: its first look was already Ready, which says
        only that the first look is late enough; the next tasks look a little earlier than it,
        lest the estimate stay late when tasks get faster. (Not earlier than the Ready look
        itself: a look made late by a busy machine must not push the estimate later; for the same
        reason its upper bound is taken as the moment the look was due.)"""
        fine = self.fine(ready)
        high = ready
        if pending is None:
            if self._highs:
                fine = self.fine()
                high = min(ready, self._first_look + fine)
            pending = high - 2 * fine
        self._lows.append(max(0.0, min(pending, high)))
        self._highs.append(high)
        before = self._first_look
        self._first_look = self._due()
        if not before or self._first_look < before - self.fine():
            self._wake()  # the first estimate, or a much earlier one: sleepers look again

    def _due(self) -> float:
        """The elapsed time of a new task's first look (see the module's docstring)."""
        low = _quantile(self._lows, 1.0 - TIGHT)
        high = _quantile(self._highs, TIGHT)
        if high <= low:  # durations vary more than the looks resolve
            self._top = 0.0
            return _median(self._lows)
        self._top = high
        return (low + high) / 2

    def expected(self) -> float | None:
        """The duration this build's tasks took (the median Ready look), once one finished."""
        return _median(self._highs) if self._highs else None

    def fine(self, expected: float | None = None) -> float:
        if expected is None:
            expected = _median(self._highs) if self._highs else 0.0
        return max(MIN_FINE, expected * FINE_FRACTION)

    # -- scheduling ------------------------------------------------------------------------------

    def wait(
        self, elapsed: float, interval: float, *, first: bool = False, last: float | None = None
    ) -> float:
        """Seconds until a task `elapsed` seconds old should be looked at; `first` for a newly
        submitted task's first look, `last` the elapsed time of its latest look. The schedule is
        reckoned from that look: a task woken because the estimate moved, which has not been
        looked at since it became likely due, looks now, however old it is."""
        if not self._highs:
            if self.prior is None:
                return random.uniform(0.0, interval) if first else _after(last, interval, elapsed)
            fine = min(interval, self.fine(self.prior))
            due = self.prior - fine
            if elapsed < due:
                return due - elapsed
            if last is not None and last < due:
                return 0.0
            if (elapsed if last is None else last) < self.prior * PRIOR_SPAN:
                return _after(last, fine, elapsed)
            return _after(last, interval, elapsed)
        fine = min(interval, self.fine())
        if elapsed < self._first_look:
            return self._first_look - elapsed
        if last is not None and last < self._first_look:
            return 0.0
        if last is not None and last < self._top:
            # Pending at the bracket's middle: most tasks are Ready by its top, sooner than a
            # fine step (a look there finds them, instead of one a whole step late).
            return _after(last, min(fine, self._top - last), elapsed)
        if (elapsed if last is None else last) < max(self._highs) + fine:
            return _after(last, fine, elapsed)
        return _after(last, interval, elapsed)

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


def _after(last: float | None, step: float, elapsed: float) -> float:
    """Seconds until `step` after the latest look (or from now, when there was none)."""
    return step if last is None else max(0.0, last + step - elapsed)


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _quantile(values: deque[float], q: float) -> float:
    """The q-quantile by nearest rank (no interpolation: a bound actually seen)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def load_prior(folder: str, provider: str) -> float | None:
    """The duration the last build against `provider` learnt, if the cache has a sane one."""
    try:
        with open(os.path.join(folder, PRIOR_FILE), "rb") as f:
            known = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    value = known.get(provider) if isinstance(known, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and 0 < value <= MAX_PRIOR else None


def save_prior(folder: str, provider: str, seconds: float) -> None:
    """Keep what this build learnt for the next (best effort: a cache, never an error)."""
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_PRIOR):
        return
    from pathlib import Path

    from flexforge.fsutil import atomic_write, read_regular

    path = os.path.join(folder, PRIOR_FILE)
    try:
        doc = json.loads(read_regular(path, 65536))
    except (OSError, ValueError):
        doc = {}
    known = {
        k: v
        for k, v in (doc.items() if isinstance(doc, dict) else ())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    known[provider] = round(seconds, 4)
    try:
        os.makedirs(folder, exist_ok=True, mode=0o700)
        data = json.dumps(known, sort_keys=True, allow_nan=False).encode()
        atomic_write(Path(path), data, durable=False)
    except (OSError, ValueError):
        pass  # only a cache
