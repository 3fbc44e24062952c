"""The team remote benchmark works end to end. Nothing here is timed: timings stay in the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_remote_benchmark_smoke_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "remote.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {
        "push 20 objects",
        "pull 20 objects",
        "4-shard build, 20 assets, one team remote",
        "4-shard build, 20 assets, no remote",
    }
    shards = rows["4-shard build, 20 assets, one team remote"]
    assert shards["submissions"] == 20
    # The bound this machine allows: the API's latency, or the CPU all processes used over its cores.
    assert shards["machine_bound_s"] >= shards["bound_s"]
    assert set(shards["cpu_s"]) == {"runners", "emulator", "moto"} and shards["cpu_s"]["runners"] > 0
    assert "Team remote benchmarks" in proc.stdout
