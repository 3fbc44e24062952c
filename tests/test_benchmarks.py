"""The benchmark runner works end to end (timings stay in the benchmark: nothing here is timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run_prints_its_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--smoke",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=300,  # a hang must fail the test, not the CI job
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    for heading in ("no-op (nothing changed)", "cold (no .flexforge/)", "cost (1 run)", "Targets (issue 4"):
        assert heading in out, out
    for row in ("python -c pass", "floor script", "flexforge build", "python -m flexforge plan"):
        assert row in out, out
    assert out_json.exists()
