"""What a build tells the person watching: rich progress on a terminal, one line per event in CI."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from flexforge.text import plural

SYMBOLS = {
    "generated": "+",
    "restored": "<",
    "up to date": "=",
    "drifted": "~",
    "failed": "!",
    "skipped": "-",
}


class Reporter(Protocol):
    def begin(self, total: int, to_generate: int) -> None: ...

    def asset_started(self, asset_id: str, action: str) -> None: ...

    def asset_done(self, asset_id: str, result: str, detail: str) -> None: ...

    def log(self, message: str) -> None: ...

    def end(self) -> None: ...


class PlainReporter:
    """One line per event; quiet drops everything but failures and logs."""

    def __init__(self, stream: TextIO | None = None, *, verbose: int = 0, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.quiet = quiet
        self.started = time.monotonic()

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def begin(self, total: int, to_generate: int) -> None:
        if not self.quiet and to_generate:
            self._line(f"building {plural(total, 'asset')} ({to_generate} to generate)")

    def asset_started(self, asset_id: str, action: str) -> None:
        if self.verbose and not self.quiet:
            self._line(f"  ... {asset_id}: {action}")

    def asset_done(self, asset_id: str, result: str, detail: str) -> None:
        if result == "up to date" and not self.verbose:
            return
        if self.quiet and result not in ("failed", "skipped", "drifted"):
            return
        elapsed = time.monotonic() - self.started
        tail = f" ({detail})" if detail else ""
        self._line(f"  {SYMBOLS.get(result, '?')} {asset_id}: {result}{tail} [{elapsed:.1f}s]")

    def log(self, message: str) -> None:
        self._line(f"  | {message}")

    def end(self) -> None:
        pass


class RichReporter(PlainReporter):
    """A live progress bar above the same event lines, for interactive terminals."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        verbose: int = 0,
        quiet: bool = False,
        color: bool = True,
    ) -> None:
        super().__init__(stream, verbose=verbose, quiet=quiet)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=self.stream, no_color=not color, highlight=False)
        self.progress = Progress(
            TextColumn("[bold]building"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[current]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None
        self.running: list[str] = []

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def begin(self, total: int, to_generate: int) -> None:
        super().begin(total, to_generate)
        self.task = self.progress.add_task("build", total=total, current="")
        self.progress.start()

    def asset_started(self, asset_id: str, action: str) -> None:
        self.running.append(asset_id)
        self._refresh()

    def asset_done(self, asset_id: str, result: str, detail: str) -> None:
        super().asset_done(asset_id, result, detail)
        if asset_id in self.running:
            self.running.remove(asset_id)
        self.progress.advance(self.task)
        self._refresh()

    def _refresh(self) -> None:
        shown = ", ".join(self.running[:3]) + (" ..." if len(self.running) > 3 else "")
        self.progress.update(self.task, current=shown)

    def end(self) -> None:
        self.progress.stop()


def make_reporter(*, verbose: int, quiet: bool, color: bool) -> Reporter:
    if sys.stderr.isatty() and not quiet:
        return RichReporter(verbose=verbose, quiet=quiet, color=color)
    return PlainReporter(verbose=verbose, quiet=quiet)
