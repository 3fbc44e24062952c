"""Issue 5, points 4 and 8, short versions: the SIGKILL loop and the fault soak of scripts/.

The long runs are documented commands (docs/reliability.md):
    python scripts/crash_harness.py --kills 200
    python scripts/soak.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str) -> ModuleType:
    """scripts/ is not a package: load a script as a module (registered, for its dataclasses)."""
    module_name = f"flexforge_scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def test_sigkill_loop_loses_nothing_and_pays_nothing_twice(tmp_path: Path) -> None:
    harness = script("crash_harness")
    # Every fifth asset has no seed in the manifest: flexforge draws and pins one.
    report = harness.run(["--kills", "8", "--assets", "20", "--seed", "11", "--workdir", str(tmp_path)])
    print(harness.summary(report))
    assert report.kills == 8
    assert report.lock_checks >= 8 and report.entries_checked > 0 and report.submissions >= 20
    assert report.violations == []


def test_the_kill_loop_notices_a_lost_journal(tmp_path: Path) -> None:
    """The harness can fail: with the journal deleted after each kill, the resumed build pays
    again for tasks that were in flight, and the loop must say so."""
    harness = script("crash_harness")
    argv = ["--kills", "1", "--assets", "4", "--seed", "3", "--unseeded-every", "0"]
    argv += ["--triggers", "journal", "--latency", "0.4,0.6", "--rekill", "0", "--sabotage-journal"]
    report = harness.run([*argv, "--workdir", str(tmp_path)])
    kinds = {v.kind for v in report.violations}
    assert harness.RESUBMITTED in kinds, harness.summary(report)
    assert report.emulator_duplicates > 0


def test_soak_builds_everything_once_under_faults() -> None:
    soak = script("soak")
    result = soak.run(["--assets", "120", "--seed", "5", "--size", "128"])
    print(soak.summary(result))
    assert result.problems == []
    assert (result.exit_code, result.locked, result.outputs_ok) == (0, 120, 120)
    # Every paid task beyond one per asset was made behind a lost answer, never replayed in a run.
    assert result.unanswered_tasks > 0 and result.submissions == 120 + result.unanswered_tasks
    assert result.worst_per_run == 1
    assert sum(result.summary_counts) == result.ambiguous > 0
    assert result.faults_injected > 50  # the faults really happened, in every phase
    assert {name.split(":")[0] for name in result.faults} == {"submit", "poll", "download"}
    assert 0 < result.peak_rss_mb < 400


def test_soak_reports_a_build_that_cannot_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak can fail: with every submission answered 500 and no retries nothing is built,
    and the soak says so."""
    soak = script("soak")
    monkeypatch.setitem(soak.CLIENT_ENV, "FLEXFORGE_MAX_RETRIES", "0")
    monkeypatch.setattr(soak, "FAULT_MIX", {"submit": {"500": 1.0}})
    result = soak.run(["--assets", "3", "--fault-rate", "1.0", "--size", "64"])
    assert result.exit_code == 1 and result.locked == 0
    assert any("0 of 3 assets in the lock" in p for p in result.problems)
    assert result.runs == 8  # it tried again, as far as allowed


def test_soak_reports_an_asset_paid_twice_in_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-run payment check can fail: with replay allowed but held to one payment per run,
    every lost answer replayed is reported."""
    soak = script("soak")
    monkeypatch.setattr(soak, "FAULT_MIX", {"submit": {"drop": 1.0}})
    real = soak.account_run

    def strict(result: Any, before: Any, after: Any, log: str, args: Any) -> None:
        args.replay = False  # judge as if no replay were allowed
        real(result, before, after, log, args)

    monkeypatch.setattr(soak, "account_run", strict)
    args = ["--assets", "3", "--fault-rate", "1.0", "--fault-task-rate", "1.0", "--size", "64"]
    result = soak.run([*args, "--replay", "--max-runs", "1"])
    assert any("paid tasks (at most 1)" in p for p in result.problems), soak.summary(result)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_the_soak_measures_the_builds_own_peak_not_its_parents() -> None:
    """wait4's ru_maxrss counted the pytest worker's memory at the fork (500 MiB after a browser
    test) as the build's: the soak's RSS bound failed on a build that used 70 MiB."""
    import subprocess
    import time

    soak = script("soak")
    ballast = bytearray(300 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident, not just reserved
    child = "import time; x = bytearray(20 * 2**20); time.sleep(0.4)"
    proc = subprocess.Popen([sys.executable, "-c", child])
    peak = 0
    while proc.poll() is None:
        peak = max(peak, soak._vm_hwm_kib(proc.pid))
        time.sleep(0.02)
    assert 20 * 1024 < peak < 200 * 1024
    assert len(ballast) == 300 * 2**20
