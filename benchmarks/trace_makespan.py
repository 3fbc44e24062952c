"""Where a makespan goes: one build against an emulator, every task's submission, readiness and polls.

The emulator runs in this process (a thread), the build as a child process, both on one monotonic
clock, so each gap is measured where it happens: start-up before the first submission, how late
polls see a Ready task, how long a freed `--jobs` place waits for its next submission, and the tail
after the last task is Ready. Not a benchmark row (run.py's makespan rows are): a tool to find the
time, and to compare two checkouts interleaved in one sitting:

    python benchmarks/trace_makespan.py                                   # 200 independent, latency 1 s
    python benchmarks/trace_makespan.py --kind chain --assets 50
    python benchmarks/trace_makespan.py --runs 3 --against /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from generate import DEFAULT_WORK_DIR, ProjectSpec, ensure_project, fresh_copy, quiet_env

import flexforge.draft  # noqa: F401  (the emulator's renderer, loaded as in a long-running emulator)
from flexforge.emulator import app as emulator_app
from flexforge.emulator.testing import running_emulator

Poll = tuple[str, float, bool]  # task id, when it arrived, whether it answered Ready


def traced_polls() -> list[Poll]:
    """Record every poll the emulator answers (its own routes are not changed, only watched)."""
    polls: list[Poll] = []
    answer = emulator_app.Emulator._answer_poll

    async def watched(self: Any, request: Any, flavour: str, owner: str | None) -> Any:
        arrived = time.monotonic()
        response = await answer(self, request, flavour, owner)
        polls.append(
            (request.query.get("id", ""), arrived, '"Ready"' in (getattr(response, "text", "") or ""))
        )
        return response

    emulator_app.Emulator._answer_poll = watched  # type: ignore[method-assign]
    return polls


def one_build(args: argparse.Namespace, polls: list[Poll], checkout: Path | None) -> dict[str, Any]:
    spec = ProjectSpec(args.assets, args.kind, references=False, sizes=((64, 64),))
    template = ensure_project(spec, args.work_dir, build=False)
    run = args.work_dir / "runs" / f"trace-{args.kind}"
    with running_emulator(latency=args.latency, seed=0, port=0) as emu:
        fresh_copy(template, run, built=False)
        emu.reset()
        env = quiet_env({"FLEXFORGE_EMULATOR_URL": emu.url, "BFL_API_KEY": "bench"})
        if checkout is not None:
            env["PYTHONPATH"] = str(checkout)
        cmd = [sys.executable, "-m", "flexforge", "build", "--provider", "emulator", "--jobs", str(args.jobs)]
        polls.clear()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
        if status != 0:
            raise SystemExit(
                f"the build failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
        tasks = list(emu._server.emulator.state.tasks.values())
    return measure(args, polls, tasks, started, ended, usage.ru_utime + usage.ru_stime)


def measure(
    args: argparse.Namespace, polls: list[Poll], tasks: list[Any], started: float, ended: float, cpu: float
) -> dict[str, Any]:
    order = sorted(tasks, key=lambda t: t.submitted_at)
    readies = sorted(t.ready_at for t in tasks)
    seen: dict[str, float] = {}
    for task_id, arrived, ready in polls:
        if ready and task_id not in seen:
            seen[task_id] = arrived
    late = [seen[t.id] - t.ready_at for t in tasks if t.id in seen]
    if args.kind == "chain":
        freed = [order[k].submitted_at - order[k - 1].ready_at for k in range(1, len(order))]
        bound = len(order) * args.latency
    else:
        jobs = args.jobs
        freed = [order[k].submitted_at - readies[k - jobs] for k in range(jobs, len(order))]
        bound = -(-len(order) // jobs) * args.latency
    return {
        "makespan": ended - started,
        "bound": bound,
        "cpu": cpu,
        "first_submission": order[0].submitted_at - started,
        "first_wave_spread": order[min(args.jobs, len(order)) - 1].submitted_at - order[0].submitted_at,
        "late_mean": statistics.mean(late) if late else 0.0,
        "late_median": statistics.median(late) if late else 0.0,
        "freed_mean": statistics.mean(freed) if freed else 0.0,
        "tail": ended - readies[-1],
        "polls_per_task": len(polls) / max(1, len(tasks)),
        "load": os.getloadavg()[0],
    }


def show(label: str, m: dict[str, Any]) -> None:
    print(
        f"{label}: makespan {m['makespan']:.2f} s = {m['makespan'] / m['bound']:.2f} x bound "
        f"({m['bound']:.2f} s); load {m['load']:.1f}; client CPU {m['cpu']:.2f} s\n"
        f"  start -> first submission {m['first_submission']:.3f} s; first wave spread over "
        f"{m['first_wave_spread']:.3f} s; last Ready -> exit {m['tail']:.3f} s\n"
        f"  Ready -> seen by a poll: mean {m['late_mean'] * 1000:.0f} ms, median "
        f"{m['late_median'] * 1000:.0f} ms; {m['polls_per_task']:.2f} polls a task\n"
        f"  Ready -> the freed place's next submission: mean {m['freed_mean'] * 1000:.0f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("independent", "chain"), default="independent")
    parser.add_argument("--assets", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument(
        "--against", type=Path, help="another checkout of flexforge: each run builds with it too, interleaved"
    )
    args = parser.parse_args(argv)
    polls = traced_polls()
    for _ in range(args.runs):
        if args.against is not None:
            show(f"{args.against}", one_build(args, polls, args.against.resolve()))
        show("this checkout", one_build(args, polls, None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
