"""An interrupted build keeps every finished asset; the next build does only the rest."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time

import pytest

from tests.helpers import Project
from tests.support.spawn import spawn_flexforge

N = 30


def start_build(project: Project) -> subprocess.Popen[str]:
    return spawn_flexforge("-C", str(project.root), "build", "--provider", "draft", "--jobs", "1")


def wait_for_outputs(project: Project, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((project.root / "assets").glob("*.png")) if (project.root / "assets").is_dir() else []
        if len(done) >= count:
            return
        time.sleep(0.01)
    pytest.fail("the build did not get going")


def temp_files(project: Project) -> list[str]:
    return [p.name for p in (project.root / "assets").iterdir() if p.name.endswith(".tmp")]


def events(stderr: str, kind: str) -> set[str]:
    return set(re.findall(rf"^  . (\S+): {kind}", stderr, re.M))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_build_keeps_finished_work(project: Project, sig: signal.Signals) -> None:
    assets = "\n".join(
        f"  a{i}: {{prompt: \"asset {i} with headline 'Number {i}'\", seed: {i}"
        + (f", references: [a{i - 1}]" if i % 5 else "")
        + "}"
        for i in range(N)
    )
    project.manifest(f"version: 1\ndefaults: {{width: 1024, height: 1024}}\nassets:\n{assets}\n")
    proc = start_build(project)
    wait_for_outputs(project, 4, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr

    # The lock parses, and each entry's output is there with the recorded bytes.
    lock_path = project.root / "flexforge.lock"
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {"assets": {}}
    for entry in lock["assets"].values():
        data = (project.root / entry["out"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    # No half-written file is left where an output belongs: a graceful stop removes its staged
    # files at once; after SIGKILL, which allows no clean-up, the next build removes them.
    if sig != signal.SIGKILL:
        assert not temp_files(project)
    finished = {p.stem for p in (project.root / "assets").glob("*.png")}
    assert len(finished) < N, "interrupted too late to prove anything"

    result = project.build()
    assert result.exit_code == 0, result.stderr
    assert not temp_files(project)
    regenerated = events(result.stderr, "generated") & finished
    assert not regenerated, f"finished assets made again: {sorted(regenerated)}"
    assert len(project.lock()["assets"]) == N
    assert project.plan() == {f"a{i}": "none" for i in range(N)}
