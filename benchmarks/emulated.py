"""A `flexforge emulator` in a process of its own for the benchmarks, and its test routes.

Not a thread of the benchmark: the emulator renders every image, and sharing one interpreter
(one GIL) with anything else the benchmark hosts (moto's S3 server) would time that contention,
not flexforge.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class EmulatorError(RuntimeError):
    """The emulator did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator_process(
    flexforge: Sequence[str], knobs: Sequence[str], log: Path, env: dict[str, str]
) -> Iterator[str]:
    """`flexforge emulator KNOBS` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    cmd = [*flexforge, "emulator", "--port", str(port), *knobs]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise EmulatorError(f"{' '.join(cmd)} exited {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise EmulatorError(f"the emulator did not listen on port {port} within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def emulator_call(url: str, method: str, path: str) -> dict[str, Any] | None:
    """Best effort: the emulator's test routes (stats, reset); None when it does not answer."""
    request = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            doc = json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
