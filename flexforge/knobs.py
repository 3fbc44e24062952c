"""The `FLEXFORGE_*` environment knobs: each read through one typed, checked helper, so that a bad
value is a one-line usage error (exit 2) naming the variable and the form it wants.

Numbers and folders here (the HTTP timings, the lock wait, build defaults, the team remote's lease
timings); FLEXFORGE_PROVIDER is checked against the providers (settings.py), and the emulator's URL
and key are the provider's own (providers/bfl.py).

A timeout of NaN never expires, an infinite one overflows the event loop's clock, a poll interval
of zero spins on the API: none of them gets past here.
"""

from __future__ import annotations

import math
import os

# The no-op path reads a folder knob before anything else loads: typing, collections.abc and the
# error module (dataclasses, inspect) would cost it more than its own work.
TYPE_CHECKING = False  # mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping

    from flexforge.errors import UsageError

# Longer than any wait anyone means (about 11.6 days); far below what would overflow a timer.
MAX_SECONDS = 1_000_000.0
MAX_COUNT = 10_000


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return value.strip() if value is not None and value.strip() else None


def _bad(name: str, raw: str, expected: str) -> UsageError:
    from flexforge.errors import UsageError, printable

    shown = raw if len(raw) <= 40 else raw[:37] + "..."
    return UsageError(printable(f"{name}={shown!r} is not valid: expected {expected}"))


def seconds(
    name: str,
    default: float,
    *,
    positive: bool = False,
    low: float = 0.0,
    high: float = MAX_SECONDS,
    environ: Mapping[str, str] | None = None,
) -> float:
    """A duration in seconds from $NAME: a finite number from `low` (above 0 when `positive`) to
    `high`; `default` when unset or blank."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    lowest = f"above {low:g}" if positive else f"from {low:g} up"
    expected = f"a number of seconds {lowest} to {high:g}, like {default:g}"
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, raw, expected) from None
    if not math.isfinite(value) or value < low or (positive and value == low) or value > high:
        raise _bad(name, raw, expected)
    return value


def count(name: str, default: int, *, environ: Mapping[str, str] | None = None) -> int:
    """A whole number from 0 to MAX_COUNT from $NAME; `default` when unset or blank."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    expected = f"a whole number from 0 to {MAX_COUNT}, like {default}"
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(MAX_COUNT)):
        raise _bad(name, raw, expected)
    value = int(raw)
    if value > MAX_COUNT:
        raise _bad(name, raw, expected)
    return value


def number(
    name: str, kind: type[int] | type[float], *, minimum: float, environ: Mapping[str, str] | None = None
) -> int | float | None:
    """An optional finite number (a whole one when `kind` is int) >= `minimum` from $NAME, or None
    when unset or blank: build defaults such as FLEXFORGE_JOBS and FLEXFORGE_MAX_COST."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    expected = f"{'a whole number' if kind is int else 'a number'} >= {minimum:g}"
    try:
        value = kind(raw)
    except ValueError:
        raise _bad(name, raw, expected) from None
    if not math.isfinite(value) or value < minimum:
        raise _bad(name, raw, expected)
    return value


def folder(name: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """An absolute folder path from $NAME, or None when unset or blank. A relative one would
    move with the working directory (the XDG rules ignore those; flexforge refuses them)."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not os.path.isabs(raw):
        raise _bad(name, raw, "an absolute path to a folder")
    return raw


__all__ = ["MAX_COUNT", "MAX_SECONDS", "count", "folder", "number", "seconds"]
