"""How a build stops on a signal: SIGINT, SIGTERM, SIGHUP and SIGQUIT all mean "stop submitting,
keep what is paid for", and no later signal cuts short the wait for answers already on their way.

A closed terminal or SSH session sends SIGHUP, Ctrl-\\ sends SIGQUIT, a cancelled CI job sends
SIGTERM (often after a SIGINT): each is a request to stop, never to drop a paid task. The first
one stops the build; later ones only say what the build is still waiting for. SIGKILL, which no
process can catch, is the way to stop at once.

A signal the process inherited as ignored stays ignored: `nohup flexforge build` keeps running
when its terminal closes, and a background job of a script is not stopped by the script's Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio is imported only by a build that runs its event loop
    import asyncio

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)


def exit_code(signum: int) -> int:
    """128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 SIGHUP, 131 SIGQUIT): what a
    shell reports for a process the signal ended, so callers can tell how the build stopped."""
    return 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A stop signal that arrived outside the event loop: raised like Ctrl-C's KeyboardInterrupt
    so that `finally` blocks remove what they staged."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class StopSignals:
    """Handlers for the stop signals, for the length of a `with` block.

    Outside the event loop the first signal raises `Interrupted`. Inside it (`attach`), the first
    cancels the main task, so the build stops submitting and drains; every signal there calls
    `notify(signum, first)`, and later ones do nothing else: the drain is bounded on its own.
    Later ones outside the loop (while the summary prints) are ignored silently: printing from a
    signal handler while the stream is mid-write raises a reentrancy error."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.notify: Callable[[int, bool], None] = lambda signum, first: None
        self._saved: dict[signal.Signals, _Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[object] | None = None

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            try:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN:
                    continue  # inherited ignored (nohup, a script's background job): respect it
                signal.signal(sig, self._outside_loop)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                continue
            self._saved[sig] = previous
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved.clear()

    def _outside_loop(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            raise Interrupted(signum)

    def attach(self, main: asyncio.Task[object]) -> None:
        """Route the stop signals through the running loop, which `main` runs on."""
        loop = main.get_loop()
        for sig in self._saved:
            try:
                loop.add_signal_handler(sig, self._in_loop, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
        self._loop, self._main = loop, main

    def detach(self) -> None:
        """Back to the handlers outside the loop (the loop's own removal would restore the
        defaults, and a SIGTERM during the summary would kill the process unannounced)."""
        loop, self._loop, self._main = self._loop, None, None
        if loop is None or loop.is_closed():
            return
        for sig in self._saved:
            try:
                loop.remove_signal_handler(sig)
                signal.signal(sig, self._outside_loop)
            except (NotImplementedError, RuntimeError, ValueError):
                continue

    def _in_loop(self, signum: int) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
            if self._main is not None:
                self._main.cancel()
        self.notify(signum, first)


__all__ = ["STOP_SIGNALS", "Interrupted", "StopSignals", "exit_code", "signal_name"]
