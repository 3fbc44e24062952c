"""Start flexforge in a child process as a terminal would, with the stop signals at their defaults.

A child inherits ignored signals: under `pytest &` in a script, SIGINT and SIGQUIT arrive ignored,
and flexforge (rightly) keeps them ignored, so every test that sends them would hang or fail.
Every test that starts flexforge goes through here, and so gets a child that handles them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs in the child before flexforge: defaults for the stop signals (but those named ignored, as
# `nohup` ignores SIGHUP), then `python -m flexforge`.
_BOOT = (
    "import runpy, signal, sys\n"
    "for name in ('SIGTERM', 'SIGHUP', 'SIGQUIT'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "for name in {ignored!r}:\n"
    "    signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
    "runpy.run_module('flexforge', run_name='__main__', alter_sys=True)\n"
)


def flexforge_argv(*args: str, ignored: tuple[str, ...] = ()) -> list[str]:
    """The command line of `python -m flexforge ARGS` with default signal handling, except for
    the signals named in `ignored`."""
    return [sys.executable, "-c", _BOOT.format(ignored=ignored), *args]


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    return {**base, **(env or {})}


def spawn_flexforge(
    *args: str, env: dict[str, str] | None = None, ignored: tuple[str, ...] = (), **popen: Any
) -> subprocess.Popen[str]:
    """flexforge ARGS in a child, stdout and stderr piped as text; `env` adds to os.environ."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(flexforge_argv(*args, ignored=ignored), text=True, env=_environment(env), **popen)


def run_flexforge(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """flexforge ARGS in a child, run to the end, output captured as text."""
    return subprocess.run(
        flexforge_argv(*args), capture_output=True, text=True, env=_environment(env), timeout=timeout, **popen
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` (a child's progress) until it holds; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a server the tests started: SIGTERM, then SIGKILL if it has not gone in 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
