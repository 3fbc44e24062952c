"""Team remote benchmarks: push/pull against `aws s3 sync` on the same S3 server, and a sharded build.

Rows, all measured in one run as whole processes:
  push N objects   `flexforge push` into an empty bucket   vs `aws s3 sync DIR s3://...` of the same objects
  pull N objects   `flexforge pull` into an empty cache    vs `aws s3 sync s3://... DIR`
  4-shard build    4 runners `build --shard i/4` at once   vs the bound ceil(N / (4 x jobs)) x latency

The S3 server is moto's server mode on loopback (what the tests use). Without the aws CLI (`pip
install awscli`), the reference is a boto3 thread-pool sync (said so in the output).

    python benchmarks/remote.py                # N = 1,000
    python benchmarks/remote.py --smoke        # N = 20, 1 repeat: proves the runner works
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # benchmarks/emulated.py

from tests.support.s3 import S3Server, running_s3  # noqa: E402


def manifest(n: int, size: int = 64) -> str:
    lines = ["version: 1", f"defaults: {{width: {size}, height: {size}}}", "assets:"]
    lines += [f'  a{i:04d}: {{prompt: "benchmark image {i}", seed: {i}}}' for i in range(n)]
    return "\n".join(lines) + "\n"


def flexforge(root: Path, *args: str, env: dict[str, str]) -> float:
    return flexforge_timed(root, *args, env=env)[0]


def flexforge_timed(root: Path, *args: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU (user + sys) of one flexforge process."""
    wall, cpu, code, err = timed([sys.executable, "-m", "flexforge", "-C", str(root), *args], env)
    if code != 0:
        raise SystemExit(f"flexforge {' '.join(args)} failed:\n{err}")
    return wall, cpu


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall time, CPU (user + sys, from the process's own rusage: what the load does not
    inflate), exit status and stderr of one process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return elapsed, usage.ru_utime + usage.ru_stime, proc.returncode, text


def aws_cli() -> list[str] | None:
    """The aws CLI itself: a pyenv shim in front of it would charge the reference a bash and
    `pyenv exec` start-up per run, which flexforge's row does not pay."""
    local = Path(sys.executable).parent / "aws"
    found = str(local) if local.exists() else shutil.which("aws")
    if found and "/shims/" in found and shutil.which("pyenv"):
        real = subprocess.run(["pyenv", "which", "aws"], capture_output=True, text=True)
        found = real.stdout.strip() if real.returncode == 0 and real.stdout.strip() else found
    return [found] if found else None


# Both sides move JOBS objects at once: aws s3's default max_concurrent_requests, set in a
# config file of the run's own (so that no ~/.aws/config changes it), and flexforge's --jobs.
JOBS = 10


def aws_config(work: Path) -> Path:
    path = work / "aws-config"
    path.write_text(f"[default]\ns3 =\n    max_concurrent_requests = {JOBS}\n")
    return path


def sync(src: str, dst: str, env: dict[str, str], server: S3Server) -> tuple[float, float | None]:
    """The reference: `aws s3 sync` (wall time and CPU), else the same with boto3 on 10 threads
    (aws's default; wall time only, in this process)."""
    cli = aws_cli()
    if cli is not None:
        wall, cpu, code, err = timed([*cli, "s3", "sync", src, dst, "--only-show-errors"], env)
        if code != 0:
            raise SystemExit(f"aws s3 sync failed: {err}")
        return wall, cpu
    started = time.perf_counter()
    _boto_sync(src, dst, server)
    return time.perf_counter() - started, None


def _boto_sync(src: str, dst: str, server: S3Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = server.client()
    if src.startswith("s3://"):
        bucket, _, prefix = src[5:].partition("/")
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]

        def get(key: str) -> None:
            out = Path(dst) / key[len(prefix) :].lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(get, keys))
    else:
        bucket, _, prefix = dst[5:].partition("/")
        files = [p for p in Path(src).rglob("*") if p.is_file()]

        def put(path: Path) -> None:
            key = f"{prefix}/{path.relative_to(src).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(put, files))


def transfer_rows(
    n: int, repeat: int, work: Path, server: S3Server, base_env: dict[str, str]
) -> list[dict[str, Any]]:
    maker = work / "maker"
    maker.mkdir(parents=True)
    (maker / "flexforge.yaml").write_text(manifest(n))
    env = {**base_env, "FLEXFORGE_REMOTE": "none"}
    flexforge(maker, "build", "--provider", "draft", env=env)
    objects = maker / ".flexforge" / "objects"
    count = sum(1 for p in objects.rglob("*") if p.is_file())
    assert count == n, f"{count} objects for {n} assets"
    base_env = {**base_env, "AWS_CONFIG_FILE": str(aws_config(work))}
    jobs = ("--jobs", str(JOBS))
    samples: dict[str, list[float]] = {"push": [], "aws push": [], "pull": [], "aws pull": []}
    cpu: dict[str, list[float | None]] = {name: [] for name in samples}

    def note(name: str, measured: tuple[float, float | None]) -> None:
        samples[name].append(measured[0])
        cpu[name].append(measured[1])

    for r in range(repeat):
        ours, theirs = server.new_bucket(), server.new_bucket()
        env = {**base_env, "FLEXFORGE_REMOTE": f"s3://{ours}/team"}
        # Interleaved, so that load from elsewhere hits both alike.
        note("push", flexforge_timed(maker, "push", *jobs, env=env))
        note("aws push", sync(str(objects), f"s3://{theirs}/team/objects", base_env, server))
        clone = work / f"clone-{r}"
        clone.mkdir()
        shutil.copy(maker / "flexforge.yaml", clone)
        shutil.copy(maker / "flexforge.lock", clone)
        note("pull", flexforge_timed(clone, "pull", *jobs, env=env))
        pulled = sum(1 for p in (clone / ".flexforge" / "objects").rglob("*") if p.is_file())
        assert pulled == n, f"pulled {pulled} of {n}"
        target = work / f"aws-{r}"
        note("aws pull", sync(f"s3://{theirs}/team/objects", str(target), base_env, server))
    reference = "aws s3 sync" if aws_cli() else "boto3 10-thread sync (aws CLI not installed)"
    rows = []
    for verb in ("push", "pull"):
        ours_s = statistics.median(samples[verb])
        theirs_s = statistics.median(samples[f"aws {verb}"])
        rows.append(
            {
                "row": f"{verb} {n} objects",
                "flexforge_s": round(ours_s, 3),
                "reference": reference,
                "reference_s": round(theirs_s, 3),
                "ratio": round(ours_s / theirs_s, 2),
                "min_ratio": round(min(samples[verb]) / min(samples[f"aws {verb}"]), 2),
                # CPU of each process (the S3 server's is neither's): what the load does not inflate.
                **_cpu_ratio(cpu[verb], cpu[f"aws {verb}"]),
                "target": "<= 1.0x",
                "concurrency": f"{JOBS} at once on both sides (--jobs; max_concurrent_requests)",
                "samples": samples[verb],
                "reference_samples": samples[f"aws {verb}"],
            }
        )
    return rows


def _cpu_ratio(ours: list[float | None], theirs: list[float | None]) -> dict[str, Any]:
    if any(c is None for c in ours + theirs) or not ours:
        return {}
    mine = statistics.median(c for c in ours if c is not None)
    reference = statistics.median(c for c in theirs if c is not None)
    return {
        "cpu_s": round(mine, 3),
        "reference_cpu_s": round(reference, 3),
        "cpu_ratio": round(mine / reference, 2),
    }


def shard_row(
    n: int,
    shards: int,
    jobs: int,
    latency: float,
    work: Path,
    server: S3Server,
    base_env: dict[str, str],
    *,
    remote: bool = True,
) -> dict[str, Any]:
    """N runners at once; with `remote`, through one team remote (leases, pushes) and a fan-in;
    without, each on its own (the reference: what the remote costs). The emulator runs in a
    process of its own: in this one it would share a GIL with moto's server."""
    from emulated import emulator_process

    from flexforge.emulator.server import client_env

    text = manifest(n)
    key = "bench-key-0123456789"
    knobs = ["--latency", str(latency), "--max-in-flight", str(shards * jobs), "--key", key, "--seed", "0"]
    log = work / f"emulator{'' if remote else '-alone'}.log"
    with emulator_process([sys.executable, "-m", "flexforge"], knobs, log, base_env) as url:
        env = {
            **base_env,
            **client_env(url, key),
            "FLEXFORGE_REMOTE": f"s3://{server.new_bucket()}/ci" if remote else "none",
            "FLEXFORGE_POLL_INTERVAL": "0.05",
            "FLEXFORGE_POLL_MAX_INTERVAL": "0.2",
        }
        runners = []
        for i in range(1, shards + 1):
            root = work / f"shard-{i}{'' if remote else '-alone'}"
            root.mkdir(parents=True)
            (root / "flexforge.yaml").write_text(text)
            runners.append(root)
        started = time.perf_counter()
        children, ours = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flexforge",
                    "-C",
                    str(r),
                    "build",
                    "--provider",
                    "emulator",
                    "--shard",
                    f"{i}/{shards}",
                    "--jobs",
                    str(jobs),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, r in enumerate(runners, 1)
        ]
        ends = []
        for proc in procs:
            _, err = proc.communicate()
            ends.append(time.perf_counter() - started)
            if proc.returncode != 0:
                raise SystemExit(f"shard build failed:\n{err}")
        makespan = max(ends)
        runners_cpu = _cpu(resource.RUSAGE_CHILDREN) - children
        moto_cpu = _cpu(resource.RUSAGE_SELF) - ours  # moto's server is a thread of this process
        submissions = _submissions(url)
        fan_in_s = 0.0
        if remote:
            fan_in = work / "fan-in"
            fan_in.mkdir()
            (fan_in / "flexforge.yaml").write_text(text)
            fan_in_s = flexforge(fan_in, "build", "--provider", "emulator", "--frozen", env=env)
            assert _submissions(url) == submissions, "the fan-in made an API call"
        before_emulator = _cpu(resource.RUSAGE_CHILDREN)
    emulator_cpu = _cpu(resource.RUSAGE_CHILDREN) - before_emulator  # reaped as the block ended
    import math

    bound = math.ceil(n / (shards * jobs)) * latency
    # The bound counts the API's latency only, as if each runner had a machine of its own. Here
    # the runners, the emulator and moto share this machine's cores: no schedule can finish
    # before the CPU they used, spread over every core, has been spent.
    cpu = runners_cpu + emulator_cpu + moto_cpu
    cores = os.cpu_count() or 1
    floor = max(bound, cpu / cores)
    return {
        "row": f"{shards}-shard build, {n} assets, {'one team remote' if remote else 'no remote'}",
        "makespan_s": round(makespan, 2),
        "bound_s": round(bound, 2),
        "ratio": round(makespan / bound, 2),
        "cpu_s": {
            "runners": round(runners_cpu, 2),
            "emulator": round(emulator_cpu, 2),
            "moto": round(moto_cpu, 2),
        },
        "machine_bound_s": round(floor, 2),
        "ratio_machine": round(makespan / floor, 2),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "per_shard_s": [round(e, 2) for e in ends],
        "submissions": submissions,
        "fan_in_frozen_s": round(fan_in_s, 2),
        "setting": f"emulator latency {latency}s, --jobs {jobs} per runner",
    }


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _submissions(url: str) -> int:
    from emulated import emulator_call

    stats = emulator_call(url, "GET", "/_emulator/stats")
    if stats is None:
        raise SystemExit(f"the emulator at {url} did not answer its stats")
    return int(stats["submissions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default="transfer,shard")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--work-dir", type=Path, help="keep the run's folders here (wiped first) instead of a temp folder"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.objects, args.assets, args.repeat, args.latency = 20, 20, 1, 0.05
    only = set(args.only.split(","))
    # moto's server logs each request (werkzeug): thousands of lines written on the timed path.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    rows: list[dict[str, Any]] = []
    with running_s3() as server, tempfile.TemporaryDirectory(prefix="flexforge-remote-bench-") as tmp:
        work = Path(tmp) if args.work_dir is None else args.work_dir.resolve()
        for old in ("transfer", "shard"):
            shutil.rmtree(work / old, ignore_errors=True)
        base_env = {
            **os.environ,
            **server.env(),
            "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "flexforge-bench-pycache"),
            "NO_COLOR": "1",
        }
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        if "transfer" in only:
            rows += transfer_rows(args.objects, args.repeat, work / "transfer", server, base_env)
        if "shard" in only:
            for remote in (True, False):
                rows.append(
                    shard_row(
                        args.assets,
                        args.shards,
                        args.jobs,
                        args.latency,
                        work / "shard",
                        server,
                        base_env,
                        remote=remote,
                    )
                )
    show: Callable[[dict[str, Any]], str] = lambda r: "  ".join(  # noqa: E731
        f"{k}={v}" for k, v in r.items() if not k.endswith("samples")
    )
    print("Team remote benchmarks (moto S3 server on loopback):")
    for row in rows:
        print("  " + show(row))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
