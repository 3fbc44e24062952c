#!/usr/bin/env python3
"""Soak: one big build under constant transient faults — every asset built, none paid twice, bounded memory.

An in-process emulator injects `--fault-rate` (default 20 %) faults into every phase of the
protocol — submit (429, 500, 503), poll (429, 500, 503, dropped connection) and download (500,
503, dropped connection, truncated body, expired URL) — while `flexforge build --provider emulator
--jobs 24` makes `--assets` assets (default 500; chains of ten). Then:

- the build exits 0 and the lock holds every asset, each output with its recorded sha256;
- the emulator accepted exactly one submission per asset and counted no duplicate body;
- the journal is empty, and no temp file is left beside the outputs;
- the build process's peak RSS (from wait4's rusage) is below `--max-rss-mb`.

`submit:drop` is not injected: a submission whose response is lost may have been charged, and a
client cannot know the task id it never received, so resubmitting it can pay twice. flexforge
says so in its error message; that case is documented in docs/reliability.md, not soaked.

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
import shutil
import subprocess
import sys
import tempfile
import time
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
    "submit": {"429": 0.4, "500": 0.3, "503": 0.3},
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
    submissions: int = 0
    duplicates: int = 0
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


def run_build(root: Path, jobs: int, env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run the build; its exit code and peak RSS in MiB (of the build process itself)."""
    command = [sys.executable, "-m", "flexforge", "-C", str(root), "build", "--provider", "emulator"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "--jobs", str(jobs)], stdout=out, stderr=out, env=env)
        # wait4 gives this child's own rusage: ru_maxrss is its peak resident set, in KiB on Linux.
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
            started = time.monotonic()
            result.exit_code, result.peak_rss_mb = run_build(root, args.jobs, env, base / "build.log")
            result.seconds = round(time.monotonic() - started, 1)
            stats = emu.stats()
        result.peak_rss_mb = round(result.peak_rss_mb, 1)
        result.submissions = stats["submissions"]
        result.duplicates = stats["duplicates"]
        result.faults = dict(sorted(stats["faults"].items()))
        result.polls = stats["polls"]
        result.downloads = stats["downloads"]
        check(root, result, args)
        if result.exit_code != 0:
            tail = (base / "build.log").read_text(errors="replace").strip().splitlines()[-5:]
            result.problems.append(f"the build exited {result.exit_code}: {' | '.join(tail)}")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


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
    if result.submissions != args.assets:
        problems.append(f"{result.submissions} paid submissions for {args.assets} assets")
    if result.duplicates:
        problems.append(f"{result.duplicates} duplicate submissions")
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
        ("paid submissions / duplicates", f"{result.submissions} / {result.duplicates}"),
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
