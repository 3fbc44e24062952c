"""Time flexforge as users feel it: whole processes, compared with their floor and with make and DVC.

One run measures everything it compares, so that ratios are not skewed by another day's load:

  no-op     `python -c pass`, the floor script (benchmarks/floor.py), no-op `flexforge build` and
            `flexforge plan` (console script and `python -m flexforge`), `make -s -r`, `make -s`,
            `dvc status` and `dvc repro`, over built projects of N assets
  cold      `flexforge plan` in a fresh `git clone` (no .flexforge/: every file hashed once) vs
            `sha256sum` over the same files
  makespan  a build against `flexforge emulator` with a fixed task latency, for N independent
            assets and for a chain, vs max(critical path, ceil(N / jobs)) x latency
  cost      CPU seconds per generated asset and peak RSS of a build from scratch (draft, emulator)
  review    `flexforge gallery` of N assets from scratch, after one change and unchanged (time, page
            weight), and `flexforge diff` over a commit that changed a tenth of them
  history   a fresh clone whose prompts were all reverted to an earlier commit: `flexforge build`
            restoring every output from git history (0 generated) vs `git checkout REV -- assets`
  pricing   `plan`'s estimate vs what the emulator billed (BFL's rule, written apart from
            flexforge/pricing.py), over examples/ and a random mix of sizes, models and references

Each command runs once to warm up (not counted), then --repeat times, commands interleaved round
robin so that a burst of load elsewhere hits all of them alike; the table shows the median and
the min-max of whole-process wall time (time.perf_counter around subprocess.run).

    python benchmarks/run.py                      # the full run (sizes 100, 1,000, 10,000)
    python benchmarks/run.py --smoke              # tiny and fast: proves the runner works
    python benchmarks/run.py --sizes 100,1000 --only noop,cold --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script (`python benchmarks/run.py`), this folder is on sys.path.
from emulated import EmulatorError, emulator_process
from emulated import emulator_call as call_emulator
from generate import (
    DEFAULT_WORK_DIR,
    GIT_IDENTITY,
    ProjectSpec,
    ensure_git_repo,
    ensure_project,
    flexforge_build,
    flexforge_command,
    fresh_copy,
    plan_assets,
    quiet_env,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("noop", "cold", "ci", "makespan", "cost", "history", "review", "pricing", "matrix")
PRICING_TOLERANCE = 0.05  # estimate within 5 % of the bill
# Rows of the no-op section, also accepted by --only to pick single rows.
NOOP_ROWS = ("pass", "floor", "build", "plan", "make", "dvc")
COLD_MAX = 1000  # cold plans are timed up to this N (the 10k clone alone would be 2 GB more)
DVC_REPRO_MAX = 1000  # `dvc repro` no-op takes minutes at 10k; `dvc status` says the same thing
MAKE_RULES_MAX = 10_000  # `make -s` (implicit-rule search) takes minutes a run at 100k
BUDGET_S = 90.0  # stop repeating a command once it used this much time (DVC at 10k)


class BenchmarkError(RuntimeError):
    """A benchmarked command failed, or did not do what the benchmark says it does."""


# -- measuring --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Probe:
    """One command to time, and the row it makes in the table."""

    section: str
    label: str
    n: int | None
    cmd: list[str]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    setup: Callable[[], None] | None = None  # run before every run, untimed (e.g. reset state)
    ok_codes: tuple[int, ...] = (0,)
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + sys seconds of each timed run
    last_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "label": self.label,
            "n": self.n,
            "command": " ".join(self.cmd),
            "samples_s": [round(s, 6) for s in self.samples],
            "median_s": round(self.median, 6) if self.samples else None,
            "min_s": round(min(self.samples), 6) if self.samples else None,
            "max_s": round(max(self.samples), 6) if self.samples else None,
            "cpu_median_s": round(statistics.median(self.cpu), 6) if self.cpu else None,
            **self.extra,
        }


def run_once(probe: Probe) -> float:
    """Wall seconds of one run of `probe`, from just before fork to just after exit; its CPU
    seconds (user + sys, from the children's rusage) go to `probe.last_cpu`."""
    if probe.setup is not None:
        probe.setup()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        probe.cmd, cwd=probe.cwd, env=probe.env or quiet_env(), capture_output=True, check=False
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    probe.last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in probe.ok_codes:
        tail = (proc.stderr or proc.stdout).decode(errors="replace")[-3000:]
        raise BenchmarkError(f"{' '.join(probe.cmd)} (in {probe.cwd}) exited {proc.returncode}:\n{tail}")
    return elapsed


def measure(probes: Sequence[Probe], repeat: int, *, warmup: int = 1, budget_s: float = BUDGET_S) -> None:
    """Time every probe `repeat` times, interleaved round robin, after `warmup` untimed runs.

    A probe that has used up `budget_s` gets no more runs (at least one is always timed)."""
    for probe in probes:
        for _ in range(warmup):
            run_once(probe)
    for _ in range(repeat):
        for probe in probes:
            if probe.samples and sum(probe.samples) >= budget_s:
                continue
            probe.samples.append(run_once(probe))
            probe.cpu.append(probe.last_cpu)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def ratio(a: Probe | None, b: Probe | None) -> float | None:
    if a is None or b is None or not a.samples or not b.samples or b.median == 0:
        return None
    return a.median / b.median


def cpu_ratio(a: Probe | None, b: Probe | None) -> float | None:
    """a's median CPU seconds over b's, when both were measured."""
    if a is None or b is None or not a.cpu or not b.cpu or statistics.median(b.cpu) <= 0:
        return None
    return statistics.median(a.cpu) / statistics.median(b.cpu)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# -- the tools --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tools:
    python: str
    flexforge: list[str]  # the console script
    module: list[str]  # python -m flexforge
    make: str | None
    sha256sum: str | None
    dvc: str | None
    emulator: bool
    emulator_note: str = ""


def find_dvc(explicit: str | None, work_dir: Path) -> str | None:
    candidates = [explicit, os.environ.get("FLEXFORGE_BENCH_DVC"), shutil.which("dvc")]
    candidates.append(str(work_dir / "dvc-venv" / "bin" / "dvc"))
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return None


def install_dvc(work_dir: Path) -> str | None:
    """pip install dvc into a venv of its own under the work dir (never into flexforge's)."""
    venv = work_dir / "dvc-venv"
    print(f"installing dvc into {venv} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # pip's output goes to the log only: the table is what this run prints.
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "dvc"], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"dvc: not installed (pip install dvc failed: {exc}){detail[-1500:]}", flush=True)
        return None
    dvc = venv / "bin" / "dvc"
    return str(dvc) if dvc.exists() else None


def emulator_available(flexforge: list[str]) -> tuple[bool, str]:
    """Whether this flexforge has `flexforge emulator` with the --latency knob."""
    proc = subprocess.run([*flexforge, "emulator", "--help"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "--latency" not in proc.stdout:
        return False, "`flexforge emulator --help` does not offer --latency: the emulator is missing"
    return True, ""


def find_tools(args: argparse.Namespace) -> Tools:
    flexforge = flexforge_command()
    # DVC costs seconds even at N=10 (its import alone), so a smoke run uses it only when asked.
    dvc = find_dvc(args.dvc, args.work_dir) if args.dvc or not args.smoke else None
    if dvc is None and args.install_dvc:
        dvc = install_dvc(args.work_dir)
    has_emulator, note = emulator_available(flexforge)
    return Tools(
        python=sys.executable,
        flexforge=flexforge,
        module=[sys.executable, "-m", "flexforge"],
        make=shutil.which("make"),
        sha256sum=shutil.which("sha256sum"),
        dvc=dvc,
        emulator=has_emulator,
        emulator_note=note,
    )


def tool_version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"


def machine_info(tools: Tools) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}",
        # Other work on the machine slows everything; interleaving keeps the ratios fair.
        "load": "load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min) at the start".format(*os.getloadavg()),
        "python": f"{platform.python_version()} ({sys.executable})",
        "bytecode": f"cached, PYTHONPYCACHEPREFIX={quiet_env()['PYTHONPYCACHEPREFIX']}"
        + (
            " (this shell has PYTHONDONTWRITEBYTECODE=1: not passed on)"
            if os.environ.get("PYTHONDONTWRITEBYTECODE")
            else ""
        ),
        "flexforge": tool_version([*tools.flexforge, "--version"]) + (f" (git {commit})" if commit else ""),
        "make": tool_version([tools.make, "--version"]) if tools.make else "not installed",
        "dvc": tool_version([tools.dvc, "--version"]) if tools.dvc else "not installed",
    }


# -- no-op ------------------------------------------------------------------------------------------


def check_noop(tools: Tools, root: Path, env: dict[str, str] | None = None, provider: str = "draft") -> None:
    """The no-op must be one: `plan --json` says every asset is `none` and nothing is orphaned."""
    cmd = [*tools.flexforge, "plan", "--json", "--provider", provider]
    proc = subprocess.run(cmd, cwd=root, env=env or quiet_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(cmd)} in {root} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    plan = json.loads(proc.stdout)
    busy = [a["id"] for a in plan["assets"] if a["action"] != "none"]
    if busy or plan.get("orphaned"):
        raise BenchmarkError(f"{root}: not up to date ({len(busy)} to do, e.g. {busy[:3]}); not a no-op")


def prepare_dvc(dvc: str, root: Path) -> None:
    """`dvc init` and record the built state in dvc.lock (`dvc commit`), once per project."""
    if (root / "dvc.lock").exists() and (root / ".dvc").exists():
        return
    env = dvc_env()
    if not (root / ".dvc").exists():
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    print(f"  dvc commit in {root.name} (once; slow at 10k) ...", flush=True)
    subprocess.run([dvc, "commit", "-f", "-q"], cwd=root, env=env, check=True, capture_output=True)


def dvc_env() -> dict[str, str]:
    return quiet_env({"DVC_NO_ANALYTICS": "1"})


def noop_section(args: argparse.Namespace, tools: Tools, wanted: set[str]) -> list[Probe]:
    probes: list[Probe] = []
    py = tools.python
    # One `python -c pass` row for the whole run; it joins every size's round robin.
    startup = Probe("noop", "python -c pass", None, [py, "-c", "pass"])
    for n in args.sizes:
        print(f"no-op, N={n}: preparing the project (generated and built once, then cached) ...", flush=True)
        root = ensure_project(ProjectSpec.for_noop(n), args.work_dir)
        check_noop(tools, root)
        group: list[Probe] = []
        if "pass" in wanted:
            group.append(startup)
        if "floor" in wanted:
            group.append(Probe("noop", "floor script", n, [py, str(HERE / "floor.py"), "."], root))
        draft = ["--provider", "draft"]
        if "build" in wanted:
            group.append(Probe("noop", "flexforge build", n, [*tools.flexforge, "build", *draft], root))
            group.append(
                Probe("noop", "python -m flexforge build", n, [*tools.module, "build", *draft], root)
            )
        if "plan" in wanted:
            group.append(Probe("noop", "flexforge plan", n, [*tools.flexforge, "plan", *draft], root))
            group.append(Probe("noop", "python -m flexforge plan", n, [*tools.module, "plan", *draft], root))
        if "make" in wanted and tools.make:
            # A cached project re-built by a newer flexforge can leave an output older than its
            # upstream's; -t marks the built targets up to date without running their recipes,
            # then -q (exit 0 only when every target is up to date) proves make agrees.
            subprocess.run([tools.make, "-s", "-r", "-t"], cwd=root, check=True, capture_output=True)
            subprocess.run([tools.make, "-q", "-r"], cwd=root, check=True)
            group.append(Probe("noop", "make -s -r", n, [tools.make, "-s", "-r"], root))
            if n <= MAKE_RULES_MAX:
                group.append(Probe("noop", "make -s", n, [tools.make, "-s"], root))
        if "dvc" in wanted and tools.dvc:
            prepare_dvc(tools.dvc, root)
            env = dvc_env()
            group.append(Probe("noop", "dvc status", n, [tools.dvc, "status", "-q"], root, env))
            if n <= DVC_REPRO_MAX:
                group.append(Probe("noop", "dvc repro", n, [tools.dvc, "repro", "-q"], root, env))
        print(f"no-op, N={n}: timing {len(group)} commands x {args.repeat} ...", flush=True)
        measure(group, args.repeat)
        probes.extend(p for p in group if p is not startup)
    if startup.samples:
        probes.insert(0, startup)
    return probes


def print_noop(probes: Sequence[Probe], sizes: Sequence[int]) -> None:
    startup = next((p for p in probes if p.label == "python -c pass"), None)
    floors = {p.n: p for p in probes if p.label == "floor script"}
    by_key = {(p.label, p.n): p for p in probes}
    rows: list[list[str]] = []
    for p in probes:
        previous = None
        if p.n is not None and p.n in sizes and sizes.index(p.n) > 0:
            previous = by_key.get((p.label, sizes[sizes.index(p.n) - 1]))
        rows.append(
            [
                p.label,
                f"{p.n:,}" if p.n is not None else "-",
                str(len(p.samples)),
                fmt_time(p.median),
                f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
                fmt_ratio(ratio(p, floors.get(p.n))),
                fmt_ratio(ratio(p, startup)),
                fmt_ratio(ratio(p, previous)),
                fmt_time(statistics.median(p.cpu)) if p.cpu else "",
            ]
        )
    headers = ["no-op (nothing changed)", "N", "runs", "median", "min - max", "x floor", "x pass", "x prev N"]
    headers.append("CPU")
    print(table(headers, rows, [False, True, True, True, True, True, True, True, True]))
    print(
        "(CPU: median user + sys of the process; on a loaded machine wall time also measures the neighbours)"
    )


# -- cold plan after git clone ----------------------------------------------------------------------


HASH_FLOOR = """\
import hashlib, sys
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        hashlib.file_digest(f, "sha256")
"""


def fresh_clone(args: argparse.Namespace, n: int, name: str) -> tuple[Path, Path]:
    """The built N-asset project, and a new `git clone` of it as a CI runner starts from."""
    root = ensure_project(ProjectSpec(n), args.work_dir)
    ensure_git_repo(root)
    clone = args.work_dir / "clones" / f"{name}-n{n}"
    if clone.exists():
        shutil.rmtree(clone)
    clone.parent.mkdir(parents=True, exist_ok=True)
    # --no-local: one pack, as a CI runner's fetch leaves it (see history_section).
    subprocess.run(["git", "clone", "-q", "--no-local", str(root), str(clone)], check=True)
    return root, clone


def cold_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    probes: list[Probe] = []
    for n in [n for n in args.sizes if n <= COLD_MAX]:
        print(f"cold plan, N={n}: cloning the built project ...", flush=True)
        _, clone = fresh_clone(args, n, "cold")
        files = sorted(
            [p.relative_to(clone).as_posix() for p in (clone / "refs").iterdir()]
            + [p.relative_to(clone).as_posix() for p in (clone / "assets").iterdir()]
        )
        megabytes = sum((clone / f).stat().st_size for f in files) / 1e6
        state = clone / ".flexforge"
        # Derived caches (stat cache, validated manifest) live in the user cache, not in the
        # clone: a runner starts with neither, so both are wiped before every timed plan.
        cache = args.work_dir / "cold-user-cache"
        env = quiet_env({"FLEXFORGE_CACHE_DIR": str(cache)})

        def forget(state: Path = state, cache: Path = cache) -> None:
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)

        extra = {"files": len(files), "megabytes": round(megabytes, 1)}
        group = []
        # sha256sum is what the issue names; Python's hashlib (OpenSSL, SHA-NI where the CPU has
        # it) can be several times faster, so the least a Python tool could do is shown too.
        group.append(
            Probe(
                "cold",
                "python hashlib (same files)",
                n,
                [tools.python, "-c", HASH_FLOOR, *files],
                clone,
                extra=extra,
            )
        )
        if tools.sha256sum:
            group.append(
                Probe("cold", "sha256sum (same files)", n, [tools.sha256sum, *files], clone, extra=extra)
            )
        plan = Probe(
            "cold",
            "flexforge plan, fresh clone",
            n,
            [*tools.flexforge, "plan", "--provider", "draft"],
            clone,
            env=env,
            setup=forget,
            extra=extra,
        )
        group.append(plan)
        # The clone has no .flexforge/: the plan must hash everything and still find nothing to do.
        forget()
        check_noop(tools, clone, env)
        print(
            f"cold plan, N={n}: {len(files)} files, {megabytes:.0f} MB, timing x {args.repeat} ...",
            flush=True,
        )
        measure(group, args.repeat)
        probes.extend(group)
    return probes


def print_cold(probes: Sequence[Probe]) -> None:
    sha = {p.n: p for p in probes if p.label.startswith("sha256sum")}
    hashlib_floor = {p.n: p for p in probes if p.label.startswith("python hashlib")}
    rows = [
        [
            p.label,
            f"{p.n:,}",
            str(p.extra["files"]),
            f"{p.extra['megabytes']:.0f}",
            str(len(p.samples)),
            fmt_time(p.median),
            f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            fmt_ratio(ratio(p, sha.get(p.n))),
            fmt_ratio(ratio(p, hashlib_floor.get(p.n))),
        ]
        for p in probes
    ]
    headers = ["cold (no .flexforge/)", "N", "files", "MB", "runs", "median", "min - max"]
    headers += ["x sha256sum", "x hashlib"]
    print(table(headers, rows, [False] + [True] * 8))


# -- restores from git history ----------------------------------------------------------------------


def history_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    probes: list[Probe] = []
    for n in [n for n in args.sizes if n <= COLD_MAX]:
        print(f"history, N={n}: building a second version of every prompt, then reverting ...", flush=True)
        base = ensure_project(ProjectSpec(n), args.work_dir)
        ensure_git_repo(base)
        origin = args.work_dir / "history" / f"origin-n{n}"
        clone = args.work_dir / "history" / f"clone-n{n}"
        first = subprocess.run(
            ["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        ready = args.work_dir / "history" / f"ready-n{n}"
        if not ready.is_file() or ready.read_text() != f"{first} packed, git blobs":
            for path in (origin, clone):
                shutil.rmtree(path, ignore_errors=True)
            _history_repo(tools, base, origin)
            # --no-local: objects in one pack, as a CI runner's fetch leaves them (a local clone
            # hardlinks loose objects, which makes every read, git's own too, several times slower).
            subprocess.run(["git", "clone", "-q", "--no-local", str(origin), str(clone)], check=True)
            ready.write_text(f"{first} packed, git blobs")
        cache = args.work_dir / "history" / f"cache-n{n}"
        env = quiet_env({"FLEXFORGE_CACHE_DIR": str(cache)})

        def reset(clone: Path = clone, cache: Path = cache) -> None:
            """A fresh clone again: HEAD's outputs and lock, no state, no history index."""
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", "HEAD", "--", "."], check=True)
            shutil.rmtree(clone / ".flexforge", ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            # The reset's writes flushed now, not during the timed run (else both rows vary 5x).
            os.sync()

        extra = {"rev": first[:7]}
        checkout = Probe(
            "history",
            "git checkout REV -- assets",
            n,
            ["git", "checkout", first, "--", "assets"],
            clone,
            setup=reset,
        )
        build = Probe(
            "history",
            "flexforge build (restores from git)",
            n,
            [*tools.flexforge, "-q", "build", "--provider", "draft"],
            clone,
            env=env,
            setup=reset,
            extra=extra,
        )
        reset()
        loud = [c for c in build.cmd if c != "-q"]
        result = subprocess.run(loud, cwd=clone, env=env, capture_output=True, text=True, check=False)
        summary = result.stderr + result.stdout
        if f"0 generated, {n} restored" not in summary:
            raise BenchmarkError(f"history, N={n}: expected {n} restores and nothing generated:\n{summary}")
        diff = subprocess.run(["git", "-C", str(clone), "diff", "--quiet", first, "--", "assets"])
        if result.returncode != 0 or diff.returncode != 0 or not _same_lock(clone, first):
            raise BenchmarkError(
                f"history, N={n}: the build did not bring back {first[:7]}'s outputs:\n{summary}"
            )
        plan_after = subprocess.run(
            [*tools.flexforge, "plan", "--json", "--provider", "draft"],
            cwd=clone,
            env=env,
            capture_output=True,
            check=True,
        )
        generated = [a for a in json.loads(plan_after.stdout)["assets"] if a["action"] != "none"]
        if generated:
            raise BenchmarkError(f"history, N={n}: {len(generated)} assets not clean after the build")
        extra["generated"] = 0
        # What any command pays first in a fresh clone (validate the manifest, hash every file):
        # the build's time above it is the restoring itself.
        plan = Probe(
            "history",
            "flexforge plan (same fresh clone)",
            n,
            [*tools.flexforge, "plan", "--provider", "draft"],
            clone,
            env=env,
            setup=reset,
        )
        print(f"history, N={n}: timing x {args.repeat} ...", flush=True)
        measure([checkout, plan, build], args.repeat)
        probes += [checkout, plan, build]
    return probes


def _same_lock(clone: Path, rev: str) -> bool:
    """Whether the clone's lock records what `rev`'s did; git_blobs aside, which a restore adds
    where the older lock had none (flexforge.gitblobs)."""

    def entries(raw: str) -> dict[str, dict[str, object]]:
        assets = json.loads(raw)["assets"]
        return {k: {f: v for f, v in e.items() if f != "git_blobs"} for k, e in assets.items()}

    then = subprocess.run(
        ["git", "-C", str(clone), "show", f"{rev}:flexforge.lock"], capture_output=True, text=True, check=True
    ).stdout
    return entries(then) == entries((clone / "flexforge.lock").read_text(encoding="utf-8"))


def _history_repo(tools: Tools, base: Path, origin: Path) -> None:
    """A clone of `base` where every prompt got a second version (built, committed) and was then
    reverted (committed, not built): HEAD's outputs are the second version's."""
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "clone", "-q", str(base), str(origin)], check=True)
    manifest = origin / "flexforge.yaml"
    original = manifest.read_text(encoding="utf-8")
    manifest.write_text(original.replace('    prompt: "', '    prompt: "v2 '), encoding="utf-8")
    subprocess.run([*tools.flexforge, "-C", str(origin), "-q", "build", "--provider", "draft"], check=True)
    subprocess.run([*git, "-C", str(origin), "commit", "-qam", "v2 prompts"], check=True)
    manifest.write_text(original, encoding="utf-8")
    subprocess.run([*git, "-C", str(origin), "commit", "-qam", "revert prompts"], check=True)


def print_history(probes: Sequence[Probe]) -> None:
    floor = {p.n: p for p in probes if p.label.startswith("git checkout")}
    rows = [
        [
            p.label,
            f"{p.n:,}",
            str(len(p.samples)),
            fmt_time(p.median),
            f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            fmt_ratio(ratio(p, floor.get(p.n))),
        ]
        for p in probes
    ]
    headers = ["prompts reverted, fresh clone", "N", "runs", "median", "min - max", "x git checkout"]
    print(table(headers, rows, [False] + [True] * 5))


# -- review pages: gallery and diff -----------------------------------------------------------------

# Outputs big enough that thumbnails are real downscales (the other rows use tiny images).
REVIEW_SIZES: tuple[tuple[int, int], ...] = ((512, 384), (384, 512), (448, 448))


def _bump_seeds(root: Path, ids: Sequence[str], bump: int) -> None:
    """Give each of `ids` another seed in the generated manifest (one `seed:` line per asset)."""
    path = root / "flexforge.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    wanted, current = set(ids), None
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("    ") and line.endswith(":"):
            current = line.strip()[:-1]
        elif current in wanted and line.startswith("    seed: "):
            lines[i] = f"    seed: {int(line.split(':')[1]) + bump}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _site_weight(out: Path) -> dict[str, Any]:
    page = (out / "index.html").stat().st_size + sum(p.stat().st_size for p in (out / "_static").iterdir())
    thumbs = [p.stat().st_size for p in (out / "thumbs").iterdir()]
    return {"page_bytes": page, "thumbs": len(thumbs), "thumb_bytes": sum(thumbs)}


def _first_view_bytes(out: Path) -> int | None:
    """Bytes of the images a 1280x900 Chromium window loads on opening the page (lazy loading
    leaves the rest), plus the page itself; None without Playwright and a system Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    browser_path = shutil.which("chromium") or "/usr/lib/chromium/chromium"
    if not Path(browser_path).exists():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((out / "index.html").as_uri(), wait_until="load")
        page.wait_for_timeout(500)
        loaded = page.evaluate(
            "Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0)"
            ".map((i) => i.getAttribute('src'))"
        )
        browser.close()
    return _site_weight(out)["page_bytes"] + sum((out / src).stat().st_size for src in loaded)


def review_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    n = args.review_size
    changed = max(1, n // 10)
    spec = ProjectSpec(n, references=False, sizes=REVIEW_SIZES)
    print(f"review, N={n}: preparing the project (generated and built once, then cached) ...", flush=True)
    template = ensure_project(spec, args.work_dir)
    runs = args.work_dir / "runs"
    work = fresh_copy(template, runs / f"review-{spec.name}", built=True)
    ensure_git_repo(work)
    base = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    cache, site, diff_site = runs / "review-cache", runs / "review-site", runs / "review-diff"
    env = quiet_env({"FLEXFORGE_CACHE_DIR": str(cache)})
    upstreams = {a.upstream for a in plan_assets(spec)}
    free = [a.id for a in plan_assets(spec) if a.id not in upstreams]  # changing these changes only them
    step = max(1, len(free) // changed)
    edited = free[::step][:changed]
    bumps = iter(range(1, 10**6))

    def clear(*folders: Path) -> Callable[[], None]:
        def run() -> None:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

        return run

    def one_change() -> None:
        _bump_seeds(work, [free[-1]], next(bumps))
        flexforge_build(work)

    gallery = [*tools.flexforge, "-C", str(work), "gallery", "--provider", "draft", "--out", str(site)]
    probes = [
        Probe("review", "gallery, from scratch", n, gallery, env=env, setup=clear(cache, site)),
        Probe("review", "gallery, after one change", n, gallery, env=env, setup=one_change),
        Probe("review", "gallery, nothing changed", n, gallery, env=env),
    ]
    print(f"review, N={n}: timing the gallery x {args.repeat} ...", flush=True)
    measure(probes, args.repeat)
    weight = _site_weight(site)
    first_view = _first_view_bytes(site)
    probes[0].extra.update(weight, first_view_bytes=first_view)

    # A commit that changes `changed` assets, against the commit before it.
    ensure_git_repo(work)
    base = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    _bump_seeds(work, edited, 7919)
    flexforge_build(work)
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), *GIT_IDENTITY, "commit", "-q", "-m", "change"], check=True)
    revs = [base.stdout.strip(), "HEAD"]
    diff = [*tools.flexforge, "-C", str(work), "diff", *revs]
    diff_probes = [
        Probe("review", f"diff, {changed} changed, cold cache", n, diff, env=env, setup=clear(cache)),
        Probe("review", f"diff, {changed} changed", n, diff, env=env),
        # Runs after the cold row cleared the cache: it makes every thumbnail and heatmap again.
        Probe(
            "review",
            f"diff --html, {changed} changed, thumbnails made",
            n,
            [*diff, "--html", str(diff_site)],
            env=env,
        ),
        Probe("review", f"diff --json, {changed} changed", n, [*diff, "--json"], env=env),
    ]
    print(f"review, N={n}: timing the diff over {changed} changed assets x {args.repeat} ...", flush=True)
    measure(diff_probes, args.repeat)
    report = subprocess.run([*diff, "--json"], env=env, capture_output=True, text=True, check=True)
    summary = json.loads(report.stdout)["summary"]
    if summary["regenerated"] != changed or summary["unchanged"] != n - changed:
        raise BenchmarkError(f"the diff should show {changed} regenerated of {n}: {summary}")
    diff_probes[2].extra.update(_site_weight(diff_site))
    return probes + diff_probes


def print_review(probes: Sequence[Probe]) -> None:
    scratch = probes[0]
    rows = []
    for p in probes:
        rows.append(
            [
                p.label,
                f"{p.n:,}",
                str(len(p.samples)),
                fmt_time(p.median),
                f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
                fmt_ratio(ratio(p, scratch)),
            ]
        )
    headers = ["review pages", "N", "runs", "median", "min - max", "x scratch"]
    print(table(headers, rows, [False, True, True, True, True, True]))
    w = scratch.extra
    first = w.get("first_view_bytes")
    each = w["thumb_bytes"] / max(1, w["thumbs"]) / 1024
    print(
        f"gallery page weight: HTML+CSS+JS {w['page_bytes'] / 1024:.0f} KB; {w['thumbs']} thumbnails "
        f"{w['thumb_bytes'] / 2**20:.1f} MB in all ({each:.1f} KB each); "
        + (
            f"first view in a 1280x900 Chromium window {first / 1024:.0f} KB (images load lazily)"
            if first
            else "first view not measured (no Playwright or Chromium)"
        )
    )
    html = next((p for p in probes if p.label.startswith("diff --html")), None)
    if html is not None and "page_bytes" in html.extra:
        print(
            f"diff page weight: HTML+CSS+JS {html.extra['page_bytes'] / 1024:.0f} KB; "
            f"{html.extra['thumbs']} thumbnails {html.extra['thumb_bytes'] / 2**20:.1f} MB"
        )


# -- the GitHub Action's check path ----------------------------------------------------------------


INSTALL_REPEAT_MAX = 3  # each install is tens of seconds
IMPORT_TOP = 12  # packages shown in the import breakdown


def install_section(args: argparse.Namespace) -> tuple[list[Probe], Path]:
    """What action.yml does before flexforge runs, timed: `python -m venv`, then `pip install`
    of a fresh clone of this repository (pip's cache warm: the untimed first round fills it).
    Returns the two probes and the last venv made, which the import breakdown then uses."""
    base = args.work_dir / "ci-install"
    source, venv = base / "flexforge-src", base / "venv"
    shutil.rmtree(source, ignore_errors=True)
    source.parent.mkdir(parents=True, exist_ok=True)
    if (REPO / ".git").exists():
        # What the action installs is a checkout: committed files only, no egg-info or .venv.
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(source)], check=True)
    else:
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", "*.egg-info", ".git"))
    python = getattr(sys, "_base_executable", sys.executable)  # as a runner's setup-python
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    make_venv = Probe("ci", "python -m venv", None, [python, "-m", "venv", str(venv)])
    install = Probe("ci", "pip install . (pip cache warm)", None, [*pip, str(source)])
    rounds = min(args.repeat, INSTALL_REPEAT_MAX)
    print(f"ci install: venv + pip install of a fresh clone, 1 + {rounds} rounds ...", flush=True)
    for i in range(rounds + 1):
        shutil.rmtree(venv, ignore_errors=True)
        for probe in (make_venv, install):
            elapsed = run_once(probe)
            if i:  # the first round warms pip's cache and the page cache
                probe.samples.append(elapsed)
    du = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    install.extra["venv_mb"] = round(du / 1e6, 1)
    return [make_venv, install], venv


def import_breakdown(
    python: Path, cmd: list[str], cwd: Path, env: dict[str, str], setup: Callable[[], None], runs: int
) -> list[tuple[str, float]]:
    """(package, median ms) of what `python -X importtime CMD...` imports, heaviest first. A
    package is charged the whole subtree it brought in where flexforge (or the interpreter's own
    start-up) imported it, so `jsonschema` includes the modules jsonschema needs; `flexforge` is
    flexforge's own modules only. `-` is everything, start-up included."""
    totals: dict[str, list[float]] = {}
    for _ in range(runs):
        setup()
        proc = subprocess.run(
            [str(python), "-X", "importtime", *cmd], cwd=cwd, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise BenchmarkError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        rows = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                own, cumulative, name = line.removeprefix("import time:").split("|")
                depth = (len(name) - len(name.lstrip())) // 2
                rows.append((depth, name.strip().split(".")[0], int(own) / 1000, int(cumulative) / 1000))
        run: dict[str, float] = {}
        parents: list[str] = []  # importtime prints children first: read it backwards
        for depth, package, own, cumulative in reversed(rows):
            del parents[depth:]
            parent = parents[-1] if parents else None
            parents.append(package)
            if package == "flexforge":
                run[package] = run.get(package, 0.0) + own
            elif parent in (None, "flexforge"):
                run[package] = run.get(package, 0.0) + cumulative
            if depth == 0:
                run["-"] = run.get("-", 0.0) + cumulative
        for package, ms in run.items():
            totals.setdefault(package, []).append(ms)
    rows_ = [(package, statistics.median(ms + [0.0] * (runs - len(ms)))) for package, ms in totals.items()]
    rows_.sort(key=lambda row: -row[1])
    return rows_


def ci_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    """What a CI runner pays: installing flexforge (venv + pip install, pip's cache warm), then in
    a fresh clone with `.flexforge/` restored from actions/cache and an empty user cache (a new
    machine) the action's `check` against a plain `build --frozen`, and what its imports cost."""
    # A smoke run proves the runner works: it skips installing (a minute of pip) and takes the
    # import breakdown in this venv.
    probes, venv = ([], None) if args.smoke else install_section(args)
    python = venv / "bin" / "python" if venv else Path(sys.executable)
    for n in [n for n in args.sizes if n <= COLD_MAX]:
        print(f"ci check, N={n}: cloning the built project ...", flush=True)
        root, clone = fresh_clone(args, n, "ci")
        runner = args.work_dir / "runner" / f"n{n}"
        shutil.rmtree(runner, ignore_errors=True)
        runner.mkdir(parents=True)
        # The restored cache: the building machine's .flexforge/ and the key that seals it.
        cached_state = runner / "cached-state"
        shutil.copytree(root / ".flexforge", cached_state, symlinks=True)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        event = {"pull_request": {"number": 1, "base": {"sha": head}, "head": {"sha": head}}}
        (runner / "event.json").write_text(json.dumps(event))
        user_cache = runner / "user-cache"
        env = quiet_env({"FLEXFORGE_CACHE_DIR": str(user_cache)})
        ci_env = {
            **env,
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(runner / "event.json"),
            "GITHUB_OUTPUT": str(runner / "output"),
            "GITHUB_STEP_SUMMARY": str(runner / "summary"),
            "GITHUB_WORKSPACE": str(clone),
            "GITHUB_REPOSITORY": "bench/project",
        }

        def fresh_runner(
            clone: Path = clone, cached: Path = cached_state, cache: Path = user_cache, runner: Path = runner
        ) -> None:
            shutil.rmtree(clone / ".flexforge", ignore_errors=True)
            shutil.copytree(cached, clone / ".flexforge", symlinks=True)
            shutil.rmtree(cache, ignore_errors=True)
            for name in ("output", "summary"):
                (runner / name).unlink(missing_ok=True)

        frozen = Probe(
            "ci",
            "flexforge build --frozen",
            n,
            [*tools.flexforge, "build", "--frozen", "--provider", "draft"],
            clone,
            env=env,
            setup=fresh_runner,
        )
        check = Probe(
            "ci",
            "action check (flexforge ci run)",
            n,
            [
                *tools.flexforge,
                "ci",
                "run",
                "--command",
                "check",
                "--provider",
                "draft",
                "--comment",
                "false",
                "--out-dir",
                str(runner / "out"),
            ],
            clone,
            env=ci_env,
            setup=fresh_runner,
        )
        fresh_runner()
        check_noop(tools, clone, env)
        print(f"ci check, N={n}: timing x {args.repeat} ...", flush=True)
        measure([frozen, check], args.repeat)
        # CPU seconds too (user + sys, with the git children): on a loaded machine wall time
        # mostly measures the neighbours, CPU what each path really does.
        cpu: dict[str, list[float]] = {frozen.label: [], check.label: []}
        for _ in range(args.repeat):
            for probe in (frozen, check):
                fresh_runner()
                assert probe.cwd is not None and probe.env is not None
                cpu[probe.label].append(timed_rusage(probe.cmd, probe.cwd, probe.env)[1])
        for probe in (frozen, check):
            probe.extra["cpu_s"] = round(statistics.median(cpu[probe.label]), 3)
        # Imports, in the venv just installed (no editable install's import hooks), as on a runner.
        installed = [str(python), "-m", "flexforge", *frozen.cmd[1:]]
        subprocess.run(installed, cwd=clone, env=env, capture_output=True, check=True)  # compile .pyc
        breakdown = import_breakdown(python, installed[1:], clone, env, fresh_runner, args.repeat)
        frozen.extra["imports_ms"] = {package: round(ms, 1) for package, ms in breakdown}
        probes += [frozen, check]
    return probes


def print_ci(probes: Sequence[Probe]) -> None:
    installs = [p for p in probes if p.n is None]
    if installs:
        rows = [
            [
                p.label,
                str(len(p.samples)),
                fmt_time(p.median),
                f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            ]
            for p in installs
        ]
        total = sum(p.median for p in installs)
        rows.append(["venv + install", "", fmt_time(total), ""])
        print(
            table(["ci: install (as action.yml)", "runs", "median", "min - max"], rows, [False] + [True] * 3)
        )
        venv_mb = installs[-1].extra.get("venv_mb")
        if venv_mb is not None:
            print(f"(installed venv: {venv_mb:.0f} MB)")
        print()
    probes = [p for p in probes if p.n is not None]
    frozen = {p.n: p for p in probes if "--frozen" in p.label}
    rows = [
        [
            p.label,
            f"{p.n:,}",
            str(len(p.samples)),
            fmt_time(p.median),
            f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            fmt_ratio(ratio(p, frozen.get(p.n))),
            fmt_time(p.extra.get("cpu_s")),
            fmt_ratio(p.extra["cpu_s"] / frozen[p.n].extra["cpu_s"] if p.n in frozen else None),
        ]
        for p in probes
    ]
    headers = ["ci: fresh clone, cache restored", "N", "runs", "median", "min - max", "x frozen"]
    headers += ["CPU", "CPU x frozen"]
    print(table(headers, rows, [False] + [True] * 7))
    for n, p in frozen.items():
        imports = p.extra.get("imports_ms")
        if not imports:
            continue
        total = imports.get("-", 0.0)
        top = [(package, ms) for package, ms in imports.items() if package != "-"][:IMPORT_TOP]
        print(f"\nimports of `flexforge build --frozen`, N={n:,} (-X importtime, median ms): {total:.0f} ms")
        print("  " + ", ".join(f"{package} {ms:.1f}" for package, ms in top))


# -- makespan against the emulator ------------------------------------------------------------------


@contextlib.contextmanager
def running_emulator(tools: Tools, latency: float, log: Path) -> Iterator[dict[str, str]]:
    """`flexforge emulator` on a free port; yields the environment that points builds at it."""
    knobs = ["--latency", str(latency), "--seed", "0"]
    try:
        with emulator_process(tools.flexforge, knobs, log, quiet_env()) as url:
            yield quiet_env({"FLEXFORGE_EMULATOR_URL": url, "BFL_API_KEY": "bench"})
    except EmulatorError as exc:
        raise BenchmarkError(str(exc)) from None


def emulator_call(env: dict[str, str], method: str, path: str) -> dict[str, Any] | None:
    return call_emulator(env["FLEXFORGE_EMULATOR_URL"], method, path)


def emulator_counters(stats: dict[str, Any] | None, assets: int) -> dict[str, Any]:
    """What explains a makespan: how full the pipe was, how often tasks were polled, 429s."""
    if not stats:
        return {}
    responses = stats.get("responses", {})
    rate_limited = sum(int(codes.get("429", 0)) for codes in responses.values() if isinstance(codes, dict))
    return {
        "peak_in_flight": stats.get("peak_in_flight"),
        "polls_per_task": round(stats.get("polls", 0) / max(1, assets), 2),
        "rate_limited_429": rate_limited,
        "submissions": stats.get("submissions"),
    }


def critical_path(spec: ProjectSpec) -> int:
    """The longest chain of assets, each waiting on the one before (1 when all are independent)."""
    depth: dict[str, int] = {}
    for a in plan_assets(spec):  # upstreams come first
        depth[a.id] = 1 + (depth[a.upstream] if a.upstream else 0)
    return max(depth.values())


def makespan_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    if not tools.emulator:
        print(f"makespan: skipped: {tools.emulator_note}", flush=True)
        return []
    small = ((64, 64),)  # the emulator renders drafts; keep its share of the 2 cores small
    cases = [
        ("independent", ProjectSpec(args.independent, "independent", references=False, sizes=small)),
        ("chain", ProjectSpec(args.chain, "chain", references=False, sizes=small)),
    ]
    probes: list[Probe] = []
    with running_emulator(tools, args.latency, args.work_dir / "logs" / "emulator-makespan.log") as env:
        for kind, spec in cases:
            template = ensure_project(spec, args.work_dir, build=False)
            work = args.work_dir / "runs" / f"makespan-{spec.name}"

            def reset(template: Path = template, work: Path = work) -> None:
                fresh_copy(template, work, built=False)
                emulator_call(env, "POST", "/_emulator/reset")  # so its stats are this run's

            depth = critical_path(spec)
            waves = math.ceil(spec.assets / args.jobs)
            bound = max(depth, waves) * args.latency
            cmd = [*tools.flexforge, "build", "--provider", "emulator", "--jobs", str(args.jobs)]
            probe = Probe(
                "makespan",
                f"{kind}, --jobs {args.jobs}",
                spec.assets,
                cmd,
                work,
                env,
                setup=reset,
                extra={"depth": depth, "bound_s": bound, "latency_s": args.latency, "jobs": args.jobs},
            )
            runs = max(1, min(args.repeat, 3))  # each run waits out real latency; 3 give a spread
            print(f"makespan: {kind}, N={spec.assets}, bound {bound:.2f} s, x {runs} ...", flush=True)
            measure([probe], runs, warmup=0, budget_s=math.inf)
            probe.extra.update(emulator_counters(emulator_call(env, "GET", "/_emulator/stats"), spec.assets))
            check_noop(tools, work, env, provider="emulator")
            # What the bound leaves out and no build can skip: start-up (imports, validation, the
            # plan) and exit, as a no-op build of the same project takes them, timed in this run.
            noop = Probe("makespan", "no-op", spec.assets, cmd, work, env)
            measure([noop], runs, warmup=1)
            probe.extra["noop_s"] = noop.median
            probes.append(probe)
    return probes


def print_makespan(probes: Sequence[Probe]) -> None:
    if not probes:
        return
    rows = [
        [
            p.label,
            f"{p.n:,}",
            str(p.extra["depth"]),
            fmt_time(p.extra["bound_s"]),
            str(len(p.samples)),
            fmt_time(p.median),
            f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            fmt_ratio(p.median / p.extra["bound_s"]),
            fmt_ratio(p.median / (p.extra["bound_s"] + p.extra["noop_s"])) if "noop_s" in p.extra else "",
            str(p.extra.get("peak_in_flight", "?")),
            str(p.extra.get("polls_per_task", "?")),
            str(p.extra.get("rate_limited_429", "?")),
        ]
        for p in probes
    ]
    latency = probes[0].extra["latency_s"]
    headers = [f"makespan (latency {latency:g} s)", "N", "depth", "bound", "runs", "median", "min - max"]
    headers += ["x bound", "x (bound + no-op)", "peak in flight", "polls/task", "429s"]
    print(table(headers, rows, [False] + [True] * 11))
    print("(peak in flight, polls/task, 429s: the emulator's own counters, for the last run;")
    print(" no-op: a no-op build of the same project, what start-up and exit cost, same run)")


# -- CPU and memory of a build from scratch ---------------------------------------------------------


def timed_rusage(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, user+sys CPU s, peak RSS MB) of one child process, from os.wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    if proc.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{output.decode(errors='replace')[-3000:]}"
        )
    rss_kb = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024  # Linux: KiB
    return wall, usage.ru_utime + usage.ru_stime, rss_kb / 1024


def cost_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    n = args.cost_size
    spec = ProjectSpec(n)
    template = ensure_project(spec, args.work_dir, build=False)
    work = args.work_dir / "runs" / f"cost-{spec.name}"
    probes: list[Probe] = []
    providers: list[tuple[str, list[str]]] = [("draft", [])]
    if tools.emulator:
        providers.append(("emulator", ["--jobs", str(args.jobs)]))
    else:
        print(f"cost, emulator: skipped: {tools.emulator_note}", flush=True)
    for provider, flags in providers:
        fresh_copy(template, work, built=False)
        cmd = [*tools.flexforge, "build", "--provider", provider, *flags]
        print(f"cost: a {n}-asset build from scratch with --provider {provider} ...", flush=True)
        with contextlib.ExitStack() as stack:
            env = quiet_env()
            if provider == "emulator":
                # A short latency: this row is about the client's CPU and memory, not waiting.
                log = args.work_dir / "logs" / "emulator-cost.log"
                env = stack.enter_context(running_emulator(tools, 0.05, log))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall, cpu, rss = timed_rusage(cmd, work, env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            check_noop(tools, work, env, provider=provider)
        # getrusage(RUSAGE_CHILDREN) cross-checks wait4: the delta covers the build alone.
        children_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        probe = Probe(
            "cost",
            f"build from scratch, --provider {provider}",
            n,
            cmd,
            work,
            extra={
                "cpu_s": round(cpu, 3),
                "cpu_s_per_asset": round(cpu / n, 5),
                "peak_rss_mb": round(rss, 1),
                "children_cpu_s": round(children_cpu, 3),
            },
        )
        probe.samples.append(wall)
        probes.append(probe)
    return probes


def print_cost(probes: Sequence[Probe]) -> None:
    rows = [
        [
            p.label,
            f"{p.n:,}",
            fmt_time(p.median),
            f"{p.extra['cpu_s']:.2f} s",
            f"{p.extra['cpu_s_per_asset'] * 1000:.1f} ms",
            f"{p.extra['peak_rss_mb']:.0f} MB",
        ]
        for p in probes
    ]
    headers = ["cost (1 run)", "N", "wall", "CPU user+sys", "CPU / asset", "peak RSS"]
    print(table(headers, rows, [False, True, True, True, True, True]))


# -- estimates against the bill --------------------------------------------------------------------


def random_priced_project(root: Path, n: int, seed: int) -> None:
    """n assets of random models, sizes (multiples of 16, <= 4 MP) and 0-4 file references of
    random sizes: what the rounding rule bites on (small references, sizes just over 1 MP)."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    models = ["flux-2-flex", "flux-2-pro", "flux-2-max", "flux-2-klein-4b", "flux-2-klein-9b"]
    lines = ["version: 1", "assets:"]
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        while True:
            width, height = rng.randrange(64, 2049, 16), rng.randrange(64, 2049, 16)
            if width * height <= 2048 * 2048:
                break
        refs = []
        for j in range(rng.randrange(0, 5)):
            ref = f"refs/r{i}-{j}.png"
            size = (rng.randrange(16, 1600), rng.randrange(16, 1600))
            Image.new("RGB", size, (rng.randrange(256), 40, 90)).save(root / ref, "PNG")
            refs.append(ref)
        lines.append(
            f"  a{i}: {{model: {rng.choice(models)}, prompt: 'asset {i}', seed: {i}, "
            f"width: {width}, height: {height}, references: {json.dumps(refs)}}}"
        )
    (root / "flexforge.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def priced_build(tools: Tools, root: Path, env: dict[str, str]) -> tuple[float, float]:
    """(plan's estimate, the emulator's bill) in US$ for building `root` from scratch."""
    emulator_call(env, "POST", "/_emulator/reset")
    plan = subprocess.run(
        [*tools.flexforge, "plan", "--json", "--provider", "emulator"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if plan.returncode not in (0, 2):
        raise BenchmarkError(f"plan failed in {root}: {plan.stderr[-2000:]}")
    estimate = float(json.loads(plan.stdout)["estimated_cost_usd"])
    timed_rusage([*tools.flexforge, "build", "--provider", "emulator", "--jobs", "8"], root, env)
    stats = emulator_call(env, "GET", "/_emulator/stats") or {}
    return estimate, float(stats.get("charged_credits", 0.0)) / 100


def _copy_unbuilt(example: Path, dest: Path) -> None:
    """The example as committed: the files git tracks, not what a build left there (the README's
    first command builds launch-kit in place: its outputs would be files nobody recorded, conflicts).
    Outside a git checkout, everything but the lock, the state folder and the outputs' folders."""
    listed = subprocess.run(["git", "-C", str(example), "ls-files", "-z", "--", "."], capture_output=True)
    names = [os.fsdecode(n) for n in listed.stdout.split(b"\0") if n]
    if listed.returncode != 0 or not names:
        ignore = shutil.ignore_patterns(".flexforge", "flexforge.lock", "assets", "site", "social")
        shutil.copytree(example, dest, ignore=ignore)
        return
    for rel in names:
        if rel == "flexforge.lock" or rel.startswith(".flexforge/"):
            continue  # priced from nothing: every asset planned and billed
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(example / rel, dest / rel)


def pricing_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    if not tools.emulator:
        print(f"pricing: skipped: {tools.emulator_note}", flush=True)
        return []
    work = args.work_dir / "runs" / "pricing"
    if work.exists():
        shutil.rmtree(work)
    examples = sorted(p.parent for p in (REPO / "examples").glob("*/flexforge.yaml"))
    projects: list[tuple[str, Path]] = []
    for example in examples:
        dest = work / example.name
        _copy_unbuilt(example, dest)
        projects.append((f"examples/{example.name}", dest))
    mix = work / "random-mix"
    random_priced_project(mix, args.pricing_size, seed=1)
    projects.append((f"random mix of {args.pricing_size} (sizes, models, 0-4 references)", mix))
    probes = []
    log = args.work_dir / "logs" / "emulator-pricing.log"
    with running_emulator(tools, 0.02, log) as env:
        for label, root in projects:
            print(f"pricing: {label} ...", flush=True)
            estimate, billed = priced_build(tools, root, env)
            gap = abs(estimate - billed) / billed if billed else None
            assets = len(json.loads((root / "flexforge.lock").read_text())["assets"])
            extra = {"estimate_usd": round(estimate, 4), "billed_usd": round(billed, 4), "gap": gap}
            probes.append(Probe("pricing", label, assets, [], root, extra=extra))
    return probes


def print_pricing(probes: Sequence[Probe]) -> None:
    rows = [
        [
            p.label,
            f"{p.n:,}",
            f"${p.extra['estimate_usd']:.4f}",
            f"${p.extra['billed_usd']:.4f}",
            "-" if p.extra["gap"] is None else f"{p.extra['gap'] * 100:.2f} %",
        ]
        for p in probes
    ]
    headers = ["pricing: plan estimate vs emulator bill", "N", "estimate", "billed", "gap"]
    print(table(headers, rows, [False, True, True, True, True]))


# -- matrices (issue 11): a 100 x 10 matrix against the same 1,000 assets written by hand -----------


def _matrix_manifests(products: int, channels: int) -> tuple[str, str]:
    """(the matrix, the equivalent hand-written manifest): same assets, same keys."""
    head = "version: 1\ndefaults: {width: 64, height: 64, steps: 4}\n"
    values = "\n".join(f"        p{i:03d}: {{name: Product {i}}}" for i in range(products))
    chans = ", ".join(f"c{j}" for j in range(channels))
    matrix = (
        head + "assets:\n  ad-{product}-{channel}:\n    matrix:\n      product:\n" + values + "\n"
        f"      channel: [{chans}]\n"
        '    prompt: "{product.name} for channel {channel}"\n'
        '    out: "ads/{product}/{channel}.png"\n'
    )
    lines = [head + "assets:"]
    for i in range(products):
        for j in range(channels):
            lines.append(
                f'  ad-p{i:03d}-c{j}: {{prompt: "Product {i} for channel c{j}", out: ads/p{i:03d}/c{j}.png}}'
            )
    return matrix, "\n".join(lines) + "\n"


def matrix_section(args: argparse.Namespace, tools: Tools) -> list[Probe]:
    products, channels = (10, 2) if args.smoke else (100, 10)
    n = products * channels
    root = args.work_dir / "matrix" / f"{products}x{channels}"
    matrix, by_hand = _matrix_manifests(products, channels)
    root.mkdir(parents=True, exist_ok=True)
    (root / "flexforge.yaml").write_text(matrix)
    (root / "by-hand.yaml").unlink(missing_ok=True)  # a sibling manifest writing the same outs: refused
    print(f"matrix, {products} x {channels}: building once with the draft renderer ...", flush=True)
    draft = ["--provider", "draft"]
    subprocess.run([*tools.flexforge, "build", "-q", *draft], cwd=root, env=quiet_env(), check=True)
    check_noop(tools, root)
    hand = args.work_dir / "matrix" / f"{products}x{channels}-by-hand"
    shutil.rmtree(hand, ignore_errors=True)
    shutil.copytree(root, hand, symlinks=True)
    (hand / "flexforge.yaml").write_text(by_hand)
    check_noop(tools, hand)  # the hand-written manifest finds the matrix's images: same keys
    probes: list[Probe] = []
    for label, where in (("matrix", root), ("by hand", hand)):
        cache = args.work_dir / "matrix" / f"cache-{label.replace(' ', '-')}"
        env = quiet_env({"FLEXFORGE_CACHE_DIR": str(cache)})

        def fresh(cache: Path = cache) -> None:
            shutil.rmtree(cache, ignore_errors=True)  # no validated-manifest cache: expand it all

        probes.append(
            Probe(
                "matrix",
                f"plan, cold manifest cache ({label})",
                n,
                [*tools.flexforge, "plan", *draft],
                where,
                env,
                fresh,
            )
        )
        probes.append(
            Probe("matrix", f"no-op build ({label})", n, [*tools.flexforge, "build", *draft], where, env)
        )
    # The floor parses what it stats: over the matrix file it would see one (template) asset and
    # stat one path, so it runs over the same assets written out, the least a naive tool that
    # expanded the matrix would still do (parse 1,000 assets, read the lock, stat every file).
    probes.append(
        Probe(
            "matrix",
            "floor script (same assets by hand)",
            n,
            [sys.executable, str(HERE / "floor.py"), "."],
            hand,
        )
    )
    # Timed in this order within each round: the cold plans, then the floor, then the two no-op
    # builds, so that neither no-op follows straight on a cold plan's cache writes (the kernel
    # writing them back takes CPU from whatever runs next on 2 cores).
    cold_first = [probes[0], probes[2], probes[4], probes[1], probes[3]]
    measure(cold_first, args.repeat)
    return probes


def print_matrix(probes: Sequence[Probe]) -> None:
    hand = {p.label.replace("(by hand)", ""): p for p in probes if "(by hand)" in p.label}
    rows = [
        [
            p.label,
            f"{p.n:,}",
            str(len(p.samples)),
            fmt_time(p.median),
            f"{fmt_time(min(p.samples))} - {fmt_time(max(p.samples))}",
            fmt_ratio(ratio(p, hand.get(p.label.replace("(matrix)", "")))),
            fmt_time(statistics.median(p.cpu)) if p.cpu else "",
            fmt_ratio(cpu_ratio(p, hand.get(p.label.replace("(matrix)", "")))),
        ]
        for p in probes
    ]
    headers = ["100 x 10 matrix vs the same assets by hand", "N", "runs", "median", "min - max", "x by hand"]
    headers += ["CPU", "CPU x by hand"]
    print(table(headers, rows, [False] + [True] * 7))


# -- targets ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    value: float | None
    limit: float
    unit: str = ""  # "" for a ratio, else e.g. "MB"

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    def line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        goal = f"(target <= {self.limit:g}{unit})"
        if self.value is None:
            return f"{self.name}: not measured in this run {goal}"
        verdict = "OK" if self.met else f"MISSED by {self.value / self.limit:.2f}x"
        value = f"{self.value:.0f}{unit}" if self.unit else f"{self.value:.2f}"
        return f"{self.name} = {value} {goal} {verdict}"


def targets(probes: Sequence[Probe], args: argparse.Namespace) -> list[Target]:
    """Each target (issues 4, 11 and 15; benchmarks/README.md lists them all) as measured in this very run."""

    def get(label: str, n: int | None) -> Probe | None:
        return next((p for p in probes if p.label == label and p.n == n), None)

    def rss(provider: str) -> float | None:
        p = get(f"build from scratch, --provider {provider}", 1000)
        return p.extra["peak_rss_mb"] if p else None

    startup = get("python -c pass", None)
    pricing = [p for p in probes if p.section == "pricing"]
    chain = next((p for p in probes if p.section == "makespan" and p.label.startswith("chain")), None)
    independent = next((p for p in probes if p.section == "makespan" and p.label.startswith("indep")), None)
    return [
        Target("no-op build 1k / floor", ratio(get("flexforge build", 1000), get("floor script", 1000)), 0.5),
        Target("no-op build 1k / python -c pass", ratio(get("flexforge build", 1000), startup), 8),
        Target(
            "no-op build 10k / 1k", ratio(get("flexforge build", 10000), get("flexforge build", 1000)), 10
        ),
        Target(
            "no-op build 10k / make -s -r",
            ratio(get("flexforge build", 10000), get("make -s -r", 10000)),
            1.5,
        ),
        Target(
            "no-op build 10k / make -s -r, CPU",
            cpu_ratio(get("flexforge build", 10000), get("make -s -r", 10000)),
            1.5,
        ),
        # Linear: ten times the files may cost at most ten times the time.
        Target(
            "no-op build 100k / 10k", ratio(get("flexforge build", 100000), get("flexforge build", 10000)), 10
        ),
        Target(
            "cold plan 1k / sha256sum",
            ratio(get("flexforge plan, fresh clone", 1000), get("sha256sum (same files)", 1000)),
            1.5,
        ),
        # Issue 15: against what Python itself hashes (hashlib, SHA extensions), not sha256sum.
        Target(
            "cold plan 1k / python hashlib",
            ratio(get("flexforge plan, fresh clone", 1000), get("python hashlib (same files)", 1000)),
            1.5,
        ),
        Target(
            f"makespan {args.independent} independent, --jobs {args.jobs} / bound",
            independent.median / independent.extra["bound_s"]
            if independent and independent.n == 200
            else None,
            1.05,
        ),
        Target(
            f"makespan {args.chain}-deep chain / bound",
            chain.median / chain.extra["bound_s"] if chain and chain.n == 50 else None,
            1.05,
        ),
        Target(
            "matrix 1k no-op build / by hand",
            ratio(get("no-op build (matrix)", 1000), get("no-op build (by hand)", 1000)),
            1.10,
        ),
        Target(
            "matrix 1k no-op build / by hand, CPU",
            cpu_ratio(get("no-op build (matrix)", 1000), get("no-op build (by hand)", 1000)),
            1.10,
        ),
        Target(
            "matrix 1k no-op build / floor",
            ratio(get("no-op build (matrix)", 1000), get("floor script (same assets by hand)", 1000)),
            0.5,
        ),
        Target(
            "matrix 1k cold-cache plan / by hand",
            ratio(
                get("plan, cold manifest cache (matrix)", 1000),
                get("plan, cold manifest cache (by hand)", 1000),
            ),
            1.5,
        ),
        Target("peak RSS, 1k build (draft)", rss("draft"), 200, "MB"),
        Target("peak RSS, 1k build (emulator)", rss("emulator"), 200, "MB"),
        Target(
            "pricing: worst |estimate - bill| / bill",
            max((p.extra["gap"] for p in pricing if p.extra["gap"] is not None), default=None),
            PRICING_TOLERANCE,
        ),
    ]


# -- comparing with an earlier run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    before: float | None
    now: float | None

    @property
    def change(self) -> float | None:
        if self.before is None or self.now is None or self.before == 0:
            return None
        return self.now / self.before - 1.0


def load_earlier(path: Path) -> dict[str, Any]:
    """An earlier run's --json file, checked enough to compare with; BenchmarkError if not one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchmarkError(f"--compare {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise BenchmarkError(f"--compare {path}: not JSON ({exc}); give a file written by --json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list):
        raise BenchmarkError(f"--compare {path}: no 'targets' list; give a file written by run.py --json")
    return doc


def _number(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None  # type: ignore[arg-type]


def compare_runs(
    earlier: dict[str, Any], found: Sequence[Target], probes: Sequence[Probe]
) -> tuple[list[Change], list[Change]]:
    """Each target (a ratio, or peak RSS) and each row's median, before and now."""
    before = {t.get("name"): _number(t.get("value")) for t in earlier["targets"] if isinstance(t, dict)}
    ratios = [Change(t.name, before.get(t.name), t.value) for t in found]
    # Rows measured against a bound of their own (makespan): their ratio, at any size.
    bounds_before = {
        (r.get("section"), r.get("label"), r.get("n")): (
            _number(r.get("median_s")),
            _number(r.get("bound_s")),
        )
        for r in earlier.get("results", [])
        if isinstance(r, dict) and "bound_s" in r
    }
    for p in probes:
        bound = _number(p.extra.get("bound_s"))
        if bound and p.samples:
            median, old_bound = bounds_before.get((p.section, p.label, p.n), (None, None))
            old_ratio = median / old_bound if median is not None and old_bound else None
            ratios.append(Change(f"{p.section}: {p.label} (N={p.n:,}) / bound", old_ratio, p.median / bound))
    ratios = [c for c in ratios if c.before is not None or c.now is not None]
    rows_before = {
        (r.get("section"), r.get("label"), r.get("n")): _number(r.get("median_s"))
        for r in earlier.get("results", [])
        if isinstance(r, dict)
    }
    rows = []
    for p in probes:
        if p.samples and (p.section, p.label, p.n) in rows_before:
            name = f"{p.section}: {p.label}" + (f" (N={p.n:,})" if p.n is not None else "")
            rows.append(Change(name, rows_before[(p.section, p.label, p.n)], p.median))
    return ratios, rows


def print_comparison(
    path: Path, earlier: dict[str, Any], ratios: Sequence[Change], rows: Sequence[Change], threshold: float
) -> list[Change]:
    """Print the changes; returns the ratios that grew by more than `threshold` (a fraction)."""
    meta = earlier.get("meta", {}) if isinstance(earlier.get("meta"), dict) else {}
    when = f"{meta.get('date', '?')}, {meta.get('flexforge', '?')}, {meta.get('load', '?')}"
    print(f"\nCompared with {path} ({when}):")

    def cells(c: Change, fmt: Callable[[float | None], str]) -> list[str]:
        change = c.change
        shown = "" if change is None else f"{change * 100:+.1f} %"
        return [c.name, fmt(c.before), fmt(c.now), shown]

    def value(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    regressed = [c for c in ratios if c.change is not None and c.change > threshold]
    rows_out = [[*cells(c, value), "REGRESSED" if c in regressed else ""] for c in ratios]
    print(
        table(
            ["ratio (lower is better)", "before", "now", "change", ""],
            rows_out,
            [False, True, True, True, False],
        )
    )
    if rows:
        print("\nrow medians, for context (absolute times move with the machine's load; ratios do not):")
        timed = [cells(c, fmt_time) for c in rows]
        print(table(["row", "before", "now", "change"], timed, [False, True, True, True]))
    if regressed:
        names = ", ".join(c.name for c in regressed)
        print(f"\nregressions beyond {threshold * 100:g} %: {names}")
    else:
        print(f"\nno ratio grew by more than {threshold * 100:g} %")
    return regressed


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,10000", help="project sizes for no-op and cold rows")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (after 1 warm-up)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat: proves the runner works")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections ({', '.join(SECTIONS)}) and/or no-op rows ({', '.join(NOOP_ROWS)})",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="generated projects (cached)")
    parser.add_argument("--latency", type=float, default=1.0, help="emulator task latency for makespan (s)")
    parser.add_argument("--jobs", type=int, default=24, help="--jobs for emulator builds")
    parser.add_argument(
        "--independent", type=int, default=200, help="assets in the independent makespan graph"
    )
    parser.add_argument("--chain", type=int, default=50, help="depth of the chained makespan graph")
    parser.add_argument("--cost-size", type=int, default=1000, help="assets in the build-from-scratch rows")
    parser.add_argument("--review-size", type=int, default=1000, help="assets in the gallery and diff rows")
    parser.add_argument("--pricing-size", type=int, default=60, help="assets in the random pricing mix")
    parser.add_argument("--dvc", default=None, help="the dvc executable (default: found on PATH or work dir)")
    parser.add_argument("--install-dvc", action="store_true", help="pip install dvc into WORK_DIR/dvc-venv")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="OLD.json",
        help="print each ratio's change since that run",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=10.0,
        metavar="PCT",
        help="with --compare: a ratio that grew by more than this many percent is a regression (10)",
    )
    parser.add_argument(
        "--fail-on-regression", action="store_true", help="with --compare: exit 1 when a ratio regressed"
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.smoke:
        args.sizes, args.repeat = [10], 1
        args.latency, args.jobs, args.independent, args.chain, args.cost_size = 0.05, 4, 10, 4, 10
        args.review_size = 10
        args.pricing_size = 8
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS) - set(NOOP_ROWS)
    if unknown:
        parser.error(
            f"--only: unknown {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS + NOOP_ROWS)}"
        )
    rows = only & set(NOOP_ROWS)
    args.sections = (only & set(SECTIONS)) | ({"noop"} if rows else set()) if only else set(SECTIONS)
    args.noop_rows = rows or set(NOOP_ROWS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # before a run of many minutes, not after it
        earlier = load_earlier(args.compare) if args.compare is not None else None
    except BenchmarkError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tools = find_tools(args)
    info = machine_info(tools)
    print(f"flexforge benchmarks, {info['date']}", flush=True)
    for key in ("machine", "load", "python", "bytecode", "flexforge", "make", "dvc"):
        print(f"  {key}: {info[key]}")
    if args.smoke and not args.dvc:
        print("dvc: skipped in a smoke run (give --dvc PATH to include it)")
    elif not tools.dvc:
        print("dvc: not installed (pip install dvc, or run with --install-dvc)")
    print(flush=True)

    probes: list[Probe] = []
    skipped: list[str] = []
    sections: list[tuple[str, Callable[[], list[Probe]], Callable[[Sequence[Probe]], None]]] = [
        ("noop", lambda: noop_section(args, tools, args.noop_rows), lambda ps: print_noop(ps, args.sizes)),
        ("cold", lambda: cold_section(args, tools), print_cold),
        ("ci", lambda: ci_section(args, tools), print_ci),
        ("makespan", lambda: makespan_section(args, tools), print_makespan),
        ("cost", lambda: cost_section(args, tools), print_cost),
        ("history", lambda: history_section(args, tools), print_history),
        ("review", lambda: review_section(args, tools), print_review),
        ("matrix", lambda: matrix_section(args, tools), print_matrix),
        ("pricing", lambda: pricing_section(args, tools), print_pricing),
    ]
    results: list[tuple[Callable[[Sequence[Probe]], None], list[Probe]]] = []
    for name, run, show in sections:
        if name not in args.sections:
            continue
        got = run()
        if not got:
            skipped.append(name)
        results.append((show, got))
        probes.extend(got)

    print()
    print(f"Results ({info['date']}; {info['machine']}; whole-process wall time, {args.repeat} runs)")
    print("{}; at the end {:.2f} {:.2f} {:.2f}".format(info["load"], *os.getloadavg()))
    for show, got in results:
        if got:
            print()
            show(got)
    if not tools.emulator:
        print(f"\nmakespan and emulator cost: skipped: {tools.emulator_note}")
    found = targets(probes, args)
    print("\nTargets (issue 4, point 2), from this run:")
    for target in found:
        print(f"  {target.line()}")
    if args.json:
        doc = {
            "meta": {**info, "args": {k: str(v) for k, v in vars(args).items()}},
            "results": [p.to_json() for p in probes],
            "targets": [{"name": t.name, "value": t.value, "limit": t.limit, "met": t.met} for t in found],
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    if earlier is not None:
        ratios, rows = compare_runs(earlier, found, probes)
        regressed = print_comparison(args.compare, earlier, ratios, rows, args.threshold / 100)
        if regressed and args.fail_on_regression:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
