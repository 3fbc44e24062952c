"""The one error type users see, and the exit codes it maps to."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHANGES = 2  # plan --detailed-exitcode: changes pending (Terraform's convention)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (`| head`): 128 + SIGPIPE


class FlexforgeError(Exception):
    """An error with a message fit for users; the CLI prints it and exits with `exit_code`."""

    exit_code = EXIT_ERROR


class UsageError(FlexforgeError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem in a manifest: `file:line:col: path: message`."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{clip(self.file, 200)}:{self.line}:{self.col}"
        path, message = clip(self.path, 120), clip(self.message, 500)
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        return printable(text)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters: a hostile manifest can hold 100 KB keys or paths longer
    than PATH_MAX, and one error line must stay readable."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """Control characters from a manifest would break the one-line-per-error format: escape them."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (a line break, a tab, ESC): no name or path in a
    manifest may, as it would end up in a file name, a log line or a CI annotation."""
    return not text.isprintable() and any(ord(c) < 32 or c == "\x7f" for c in text)


class ManifestError(FlexforgeError):
    """Every problem found in a manifest, reported at once."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.file, d.line, d.col, d.path))
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class ProviderError(FlexforgeError):
    """An asset could not be generated. `fatal` stops every further submission in the run."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
