"""Races on a team remote, counted: R races of M runners building the same K new keys at once.

Each race: M copies of one project (as M machines would have them, no shared local state), one
emulator as the API, one fresh remote (a folder, or a bucket on moto's S3 server, on
fake-gcs-server, or a container on Azurite, all on loopback); all runners
start together with `--jobs 8`. Counted afterwards: paid submissions at the emulator, duplicates
(submissions beyond one per key), runners that failed, and leases left behind.

    python scripts/race.py --races 10 --keys 50 --runners 2 --backend file,s3,gcs,azure
    python scripts/race.py --kill            # one runner SIGKILLed once its tasks are leased
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexforge.emulator.testing import running_emulator
from flexforge.remote import RELEASED, open_remote
from tests.support.azure import running_azurite
from tests.support.gcs import running_fake_gcs
from tests.support.s3 import running_s3

# The server each backend races on, started once for all its races.
SERVERS = {"s3": running_s3, "gcs": running_fake_gcs, "azure": running_azurite}

KEY = "race-key-0123456789abcdef"


def manifest(keys: int, race: int) -> str:
    lines = ["version: 1", "defaults: {width: 64, height: 64}", "assets:"]
    for i in range(keys):
        seed = f", seed: {i + 1}" if i % 2 else ""  # half drawn by flexforge: machines must agree
        lines.append(f'  k{i:03d}: {{prompt: "race {race} image {i}"{seed}}}')
    return "\n".join(lines) + "\n"


def leases(url: str) -> list[dict[str, object]]:
    remote = open_remote(url)
    remote.fs.invalidate_cache()
    try:
        names = remote.fs.find(f"{remote.root}/leases")
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if str(name).endswith(".json") and "/probe-" not in str(name):
            with contextlib.suppress(FileNotFoundError, ValueError):  # released while we look
                data = bytes(remote.fs.cat_file(name))
                if data != RELEASED:  # a released lease on gs:// (remote.GCSConditional)
                    found.append(json.loads(data))
    return found


def new_url(backend: str, server: Any, work: Path, number: int) -> str:
    if backend == "s3":
        return f"s3://{server.new_bucket()}/race"
    if backend == "gcs":
        return f"gs://{server.new_bucket()}/race"
    if backend == "azure":
        return f"az://{server.new_container()}/race"
    return f"file://{work / f'remote-{backend}-{number}'}"


def race(args: argparse.Namespace, backend: str, number: int, work: Path, server: Any) -> dict[str, int]:
    url = new_url(backend, server, work, number)
    rnd = random.Random(number)
    with running_emulator(latency=rnd.uniform(0.05, 0.4), accepted_keys=(KEY,), max_in_flight=64) as emu:
        env = {
            **os.environ,
            **emu.env(),
            **(server.env() if server is not None else {}),
            "BFL_API_KEY": KEY,
            "FLEXFORGE_REMOTE": url,
            "FLEXFORGE_LEASE_POLL": "0.05",
            "FLEXFORGE_POLL_INTERVAL": "0.05",
        }
        text = manifest(args.keys, number)
        procs = []
        for m in range(args.runners):
            procs.append(start_machine(work / f"{backend}-{number}-machine-{m}", text, env))
        killed = 0
        if args.kill:
            deadline = time.monotonic() + 60
            while (
                sum(bool(x.get("task_id")) for x in leases(url)) < min(args.keys, 8)
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            killed = 1
            # Another machine finishes what the killed one leased.
            procs.append(start_machine(work / f"{backend}-{number}-machine-late", text, env))
        failed = 0
        for proc in procs[killed:]:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0 or "Traceback" in err:
                failed += 1
                print(err, file=sys.stderr)
        paid = emu.stats()["submissions"]
    return {
        "paid": paid,
        "duplicates": paid - args.keys,
        "failed": failed,
        "leases_left": len(leases(url)),
        "killed": killed,
    }


@contextlib.contextmanager
def _environ(changes: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(changes)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_machine(root: Path, manifest_text: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A project copy of its own, building against the emulator as another machine would."""
    root.mkdir(parents=True)
    (root / "flexforge.yaml").write_text(manifest_text)
    return subprocess.Popen(
        [sys.executable, "-m", "flexforge", "-C", str(root), "build", "--provider", "emulator", "-j", "8"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_backend(args: argparse.Namespace, backend: str, server: Any, work: Path) -> dict[str, int]:
    total = {"races": 0, "keys": 0, "paid": 0, "duplicates": 0, "failed": 0, "leases_left": 0, "killed": 0}
    started = time.monotonic()
    for number in range(args.races):
        result = race(args, backend, number, work, server)
        total["races"] += 1
        total["keys"] += args.keys
        for name, value in result.items():
            total[name] += value
        print(f"{backend} race {number}: {result}", flush=True)
    total["seconds"] = round(time.monotonic() - started)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--races", type=int, default=10)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--backend", default="file,s3")
    parser.add_argument("--kill", action="store_true")
    args = parser.parse_args()
    totals: dict[str, dict[str, int]] = {}
    backends = args.backend.split(",")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="flexforge-race-"))
        servers = {b: stack.enter_context(SERVERS[b]()) for b in backends if b in SERVERS}
        for backend in backends:
            server = servers.get(backend)
            # Only this backend's variables, here (this process looks at the remote too) and in
            # the runners: another's (FSSPEC_GS_*) would change how flexforge opens S3.
            with _environ(server.env() if server is not None else {}):
                totals[backend] = run_backend(args, backend, server, Path(tmp))
    print(json.dumps(totals, indent=2))
    return 0 if all(t["duplicates"] == 0 and t["failed"] == 0 for t in totals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
