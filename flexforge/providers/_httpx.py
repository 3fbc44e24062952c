"""httpx without its command-line tool: the module every flexforge import of httpx goes through.

httpx's package init imports `httpx._main` (its `httpx` command: rich, pygments, click's
formatting), ~35 ms of CPU that a build pays before its first submission, for a tool flexforge
never runs. A stand-in is registered first; `httpx.main()` then says why it is not there.
"""

from __future__ import annotations

import sys
import types
from typing import NoReturn

if "httpx" not in sys.modules and "httpx._main" not in sys.modules:

    def _main(*args: object, **kwargs: object) -> NoReturn:
        raise ImportError("httpx's command-line tool is not loaded in flexforge's process; run `httpx`")

    _cli = types.ModuleType(
        "httpx._main", "httpx's command-line tool: not loaded (see flexforge.providers._httpx)"
    )
    _cli.main = _main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = _cli

import httpx

__all__ = ["httpx"]
