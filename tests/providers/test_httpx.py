"""httpx is imported without its command-line tool: a build does not pay for loading it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_providers_load_httpx_without_its_command_line_tool() -> None:
    script = (
        "import sys, flexforge.providers._http, httpx\n"
        "print('rich' in sys.modules, hasattr(httpx, 'AsyncClient'))\n"
        "try:\n"
        "    httpx.main()\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)

    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "False True"  # rich (the CLI's) never loaded; the client is all there
    assert second.startswith("refused:") and "command-line tool" in second
