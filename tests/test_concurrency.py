"""Two builds in one repo: the second waits, then fails cleanly; a killed holder leaves no stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys

from filelock import FileLock

from tests.helpers import Project
from tests.support.spawn import run_flexforge, spawn_flexforge

MANIFEST = """
version: 1
defaults: {width: 128, height: 128}
assets:
  a: {prompt: "one", seed: 1}
"""


def build(project: Project, timeout: str) -> subprocess.CompletedProcess[str]:
    return run_flexforge(
        "-C", str(project.root), "build", "--provider", "draft", env={"FLEXFORGE_LOCK_TIMEOUT": timeout}
    )


def test_second_build_waits_then_fails_cleanly(project: Project) -> None:
    project.manifest(MANIFEST)
    (project.root / ".flexforge").mkdir()
    with FileLock(project.root / ".flexforge" / "build.lock"):
        result = build(project, "0.5")
    assert result.returncode == 1
    assert "waiting for another flexforge build" in result.stderr
    assert "another flexforge build holds" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "flexforge.lock").exists()
    assert build(project, "0.5").returncode == 0


def test_second_build_proceeds_when_the_first_finishes(project: Project) -> None:
    project.manifest(MANIFEST)
    (project.root / ".flexforge").mkdir()
    lock = FileLock(project.root / ".flexforge" / "build.lock")
    lock.acquire()
    proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "draft")
    assert proc.stderr is not None
    first_line = proc.stderr.readline()  # the build says it waits, then waits
    lock.release()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "waiting for another flexforge build" in first_line


def test_a_killed_holder_leaves_no_stale_lock(project: Project) -> None:
    project.manifest(MANIFEST)
    (project.root / ".flexforge").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock;"
            "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            str(project.root / ".flexforge" / "build.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = build(project, "0.5")
    assert result.returncode == 0, result.stderr
    assert "waiting" not in result.stderr
