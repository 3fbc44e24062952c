#!/usr/bin/env python3
"""Soak: builds under constant faults — every asset built, paid at most once per run, bounded memory.

An in-process emulator injects `--fault-rate` (default 20 %) faults into every phase of the
protocol — submit (429, 503 that says no task was made, and the ambiguous 500, 502, 504 and
dropped connection), poll (429, 500, 503, dropped connection) and download (500, 503, dropped
connection, truncated body, expired URL) — while `flexforge build --provider emulator --jobs 24
--keep-going` makes `--assets` assets (default 500; chains of ten). An ambiguous submit fault
comes after the task was created and charged with probability `--fault-task-rate` (default 0.5):
flexforge cannot know, so it fails that asset as "may have been charged" and never replays it
(unless `--replay`, FLEXFORGE_SUBMIT_REPLAY=1). The build is run again until everything is built
(at most `--max-runs`). Then:

- the last build exits 0 and the lock holds every asset, each output with its recorded sha256;
- in each run, no asset made more than one paid task (two with `--replay`), and the run's
  summary counted exactly the ambiguous submissions the emulator injected;
- paid tasks = assets + tasks made behind a lost answer: nothing else was paid twice;
- the journal is empty, and no temp file is left beside the outputs;
- each build process's peak RSS (from wait4's rusage) is below `--max-rss-mb`.

The retry budget is raised (FLEXFORGE_MAX_RETRIES=10, default 5): at a 20 % fault rate, far above
any real service, six faults in a row on one call (0.2**6, about 1 in 15,000 calls) would fail an
asset legitimately now and then, which is not what this measures.

    python scripts/soak.py                      # 500 assets, 20 % faults, 24 jobs
    python scripts/soak.py --assets 120         # what the test suite runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SECRET = "sk-soak-0123456789abcdef"
CLIENT_ENV = {
    "FLEXFORGE_POLL_INTERVAL": "0.05",
    "FLEXFORGE_POLL_MAX_INTERVAL": "0.2",
    "FLEXFORGE_RETRY_BASE_DELAY": "0.02",
    "FLEXFORGE_RETRY_MAX_DELAY": "0.2",
    "FLEXFORGE_MAX_RETRIES": "10",
    "NO_COLOR": "1",
}
# How each phase's share of faults is split between kinds (each row sums to 1).
FAULT_MIX = {
    "submit": {"429": 0.3, "503": 0.3, "500": 0.15, "502": 0.05, "504": 0.05, "drop": 0.15},
    "poll": {"429": 0.25, "500": 0.25, "503": 0.25, "drop": 0.25},
    "download": {"500": 0.2, "503": 0.2, "drop": 0.2, "truncate": 0.25, "expired": 0.15},
}


@dataclass
class SoakResult:
    assets: int
    jobs: int
    fault_rate: float
    exit_code: int = -1
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    locked: int = 0
    outputs_ok: int = 0
    runs: int = 0
    submissions: int = 0
    duplicates: int = 0
    ambiguous: int = 0  # submit faults after which a client cannot know whether it paid
    unanswered_tasks: int = 0  # of those, the ones that made (and charged) a task
    summary_counts: list[int] = field(default_factory=list)  # "may have been charged", per run
    paid_per_asset: dict[int, int] = field(default_factory=dict)  # paid tasks -> assets, all runs
    worst_per_run: int = 0  # most paid tasks for one asset in one run
    faults: dict[str, int] = field(default_factory=dict)
    polls: int = 0
    downloads: int = 0
    journal_left: int = 0
    tmp_left: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())


def faults(rate: float) -> dict[str, float]:
    return {
        f"{phase}:{kind}": rate * share for phase, mix in FAULT_MIX.items() for kind, share in mix.items()
    }


def write_project(root: Path, count: int, size: int) -> None:
    root.mkdir(parents=True)
    lines = ["version: 1", f"defaults: {{width: {size}, height: {size}}}", "assets:"]
    for i in range(count):
        refs = f", references: [s{i - 1:04d}]" if i % 10 else ""
        lines.append(
            f"  s{i:04d}: {{prompt: \"soak asset {i} with the headline 'No {i}'\", seed: {i}{refs}}}"
        )
    (root / "flexforge.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set so far (KiB), or 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_build(root: Path, jobs: int, env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run the build; its exit code and peak RSS in MiB (of the build process itself)."""
    command = [
        *(sys.executable, "-m", "flexforge", "-C", str(root), "build", "--provider", "emulator"),
        "--keep-going",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "--jobs", str(jobs)], stdout=out, stderr=out, env=env)
        if os.path.exists(f"/proc/{proc.pid}/status"):
            # Linux: wait4's ru_maxrss also counts the parent's resident set at the fork (exec
            # keeps the old memory's high-water mark), so from a pytest worker that ran a browser
            # test it reads hundreds of MiB the build never used. VmHWM is the build's own peak.
            peak_kib = 0
            while proc.poll() is None:
                peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
                time.sleep(0.02)
            return proc.returncode, peak_kib / 1024
        # wait4 gives this child's own rusage: ru_maxrss is its peak resident set (bytes on macOS).
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
    return proc.returncode, usage.ru_maxrss * scale / 2**20


def soak(args: argparse.Namespace) -> SoakResult:
    from flexforge.emulator.testing import running_emulator

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # dropped connections log tracebacks
    result = SoakResult(args.assets, args.jobs, args.fault_rate)
    base = Path(tempfile.mkdtemp(prefix="flexforge-soak-"))
    root = base / "project"
    try:
        write_project(root, args.assets, args.size)
        knobs: dict[str, Any] = {
            "submit_fault_task_rate": args.fault_task_rate,
            "latency": 0.2,
            "jitter": 0.15,
            "faults": faults(args.fault_rate),
            "seed": args.seed,
            "accepted_keys": (SECRET,),
            "max_in_flight": 24,
            "capture_limit": 10,
        }
        with running_emulator(**knobs) as emu:
            env = {**os.environ, **emu.env(), **CLIENT_ENV, "BFL_API_KEY": SECRET}
            env.pop("FLEXFORGE_PROVIDER", None)
            if args.replay:
                env["FLEXFORGE_SUBMIT_REPLAY"] = "1"
            started = time.monotonic()
            stats = emu.stats()
            while result.runs < args.max_runs and (result.runs == 0 or result.exit_code != 0):
                before = stats
                result.exit_code, rss = run_build(root, args.jobs, env, base / "build.log")
                result.peak_rss_mb = max(result.peak_rss_mb, rss)
                result.runs += 1
                stats = emu.stats()
                account_run(result, before, stats, (base / "build.log").read_text(errors="replace"), args)
            result.seconds = round(time.monotonic() - started, 1)
        result.peak_rss_mb = round(result.peak_rss_mb, 1)
        result.submissions = stats["submissions"]
        result.duplicates = stats["duplicates"]
        result.unanswered_tasks = stats["unanswered_tasks"]
        result.paid_per_asset = dict(sorted(Counter(stats["per_body"].values()).items()))
        result.faults = dict(sorted(stats["faults"].items()))
        result.polls = stats["polls"]
        result.downloads = stats["downloads"]
        check(root, result, args)
        if result.exit_code != 0:
            tail = (base / "build.log").read_text(errors="replace").strip().splitlines()[-5:]
            result.problems.append(f"the last build exited {result.exit_code}: {' | '.join(tail)}")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


def account_run(
    result: SoakResult, before: dict[str, Any], after: dict[str, Any], log: str, args: argparse.Namespace
) -> None:
    """One build's share of the emulator's counters, checked against what the build said."""
    run = result.runs
    paid = [n - before["per_body"].get(body, 0) for body, n in after["per_body"].items()]
    worst = max(paid, default=0)
    result.worst_per_run = max(result.worst_per_run, worst)
    allowed = 2 if args.replay else 1
    if worst > allowed:
        result.problems.append(f"run {run}: an asset made {worst} paid tasks (at most {allowed})")
    ambiguous = after["ambiguous_submits"] - before["ambiguous_submits"]
    result.ambiguous += ambiguous
    found = re.search(r"^(\d+) submissions? may have been charged with no answer", log, re.M)
    said = int(found.group(1)) if found else 0
    result.summary_counts.append(said)
    if said != ambiguous:
        result.problems.append(
            f"run {run}: the summary counted {said} maybe-charged submissions, the emulator {ambiguous}"
        )


def check(root: Path, result: SoakResult, args: argparse.Namespace) -> None:
    problems = result.problems
    lock_path = root / "flexforge.lock"
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {"assets": {}}
    result.locked = len(lock["assets"])
    for asset_id, entry in lock["assets"].items():
        path = root / entry["out"]
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]:
            result.outputs_ok += 1
        else:
            problems.append(f"{asset_id}: output missing or not the recorded bytes")
    if result.locked != args.assets:
        problems.append(f"{result.locked} of {args.assets} assets in the lock")
    # Every paid task beyond one per asset must be one made behind an answer that was lost.
    if result.submissions != args.assets + result.unanswered_tasks:
        problems.append(
            f"{result.submissions} paid tasks for {args.assets} assets and "
            f"{result.unanswered_tasks} tasks made behind a lost answer"
        )
    journal = root / ".flexforge" / "journal"
    result.journal_left = len(list(journal.glob("*.json"))) if journal.is_dir() else 0
    if result.journal_left:
        problems.append(f"{result.journal_left} journal entries left")
    result.tmp_left = sum(1 for p in root.rglob("*.tmp") if ".flexforge" not in p.parts)
    if result.tmp_left:
        problems.append(f"{result.tmp_left} temp files left beside outputs")
    if result.peak_rss_mb > args.max_rss_mb:
        problems.append(f"peak RSS {result.peak_rss_mb} MiB > {args.max_rss_mb} MiB")


def summary(result: SoakResult) -> str:
    rows = [
        (
            "assets declared / in the lock / outputs verified",
            f"{result.assets} / {result.locked} / {result.outputs_ok}",
        ),
        ("build exit code", str(result.exit_code)),
        ("wall time", f"{result.seconds} s (--jobs {result.jobs})"),
        ("builds run (--keep-going, until all built)", str(result.runs)),
        ("paid tasks / of them behind a lost answer", f"{result.submissions} / {result.unanswered_tasks}"),
        (
            "paid tasks per asset (all runs): assets",
            ", ".join(f"{paid}: {n}" for paid, n in result.paid_per_asset.items()) or "-",
        ),
        ("most paid tasks for one asset in one run", str(result.worst_per_run)),
        (
            "maybe-charged submissions: emulator / summaries",
            f"{result.ambiguous} / {sum(result.summary_counts)} "
            f"({' + '.join(map(str, result.summary_counts))})",
        ),
        ("faults injected (rate per request)", f"{result.faults_injected} ({result.fault_rate:.0%})"),
        ("  by kind", ", ".join(f"{k} {n}" for k, n in result.faults.items()) or "-"),
        ("polls / downloads served", f"{result.polls} / {result.downloads}"),
        ("journal entries / temp files left", f"{result.journal_left} / {result.tmp_left}"),
        ("peak RSS of the build process", f"{result.peak_rss_mb} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("OK" if not result.problems else "FAILED: " + "; ".join(result.problems))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=500, help="assets to build (default 500)")
    parser.add_argument("--jobs", type=int, default=24, help="flexforge build --jobs (default 24)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="faults per request and phase")
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the emulator's fault dice")
    parser.add_argument(
        "--fault-task-rate", type=float, default=0.5, help="how often an ambiguous submit fault made the task"
    )
    parser.add_argument("--replay", action="store_true", help="FLEXFORGE_SUBMIT_REPLAY=1 for the builds")
    parser.add_argument("--max-runs", type=int, default=8, help="builds to run at most (default 8)")
    parser.add_argument("--max-rss-mb", type=float, default=400.0, help="peak RSS bound (default 400)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the project for inspection")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> SoakResult:
    args = parse_args(argv)
    result = soak(args)
    if args.json:
        data = {**asdict(result), "faults_injected": result.faults_injected}
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    result = run(argv)
    print(summary(result))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
