"""An interrupted build keeps every finished asset; the next build does only the rest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Project
from tests.support.mounts import fill, tmpfs
from tests.support.spawn import spawn_flexforge, wait_for

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


# git, except that the restore pass's stream (`cat-file --batch --buffer`) hands over COUNT
# objects, then stalls until flexforge dies or the file GO appears: a build caught mid-restore at
# a known point.
STALLING_GIT = """#!{python}
import os, subprocess, sys, time
REAL = {real!r}
args = sys.argv[1:]
if not ("cat-file" in args and "--batch" in args and "--buffer" in args):
    os.execv(REAL, [REAL, *args])
git = subprocess.Popen([REAL, *args], stdout=subprocess.PIPE)
out = sys.stdout.buffer
for _ in range({count}):
    header = git.stdout.readline()
    if not header:
        break
    out.write(header)
    fields = header.split()
    if len(fields) == 3:
        out.write(git.stdout.read(int(fields[2]) + 1))
    out.flush()
open({marker!r}, "w").close()
parent = os.getppid()
while os.getppid() == parent and not os.path.exists({go!r}):
    time.sleep(0.02)
while os.getppid() == parent and (chunk := git.stdout.read1(65536)):
    out.write(chunk)
    out.flush()
git.kill()
"""


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)
    return done.stdout


def stalling_git(folder: Path, count: int) -> tuple[dict[str, str], Path]:
    """An environment whose `git` stalls the restore stream after `count` objects (until
    `folder/go` exists), and the file it creates when it stalls."""
    folder.mkdir()
    marker = folder / "stalled"
    script = folder / "git"
    real = shutil.which("git")
    assert real is not None
    script.write_text(
        STALLING_GIT.format(
            python=sys.executable, real=real, count=count, marker=str(marker), go=str(folder / "go")
        )
    )
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, marker


def committed_project(project: Project, n: int) -> None:
    """n built and committed outputs, then deleted with the local state: a fresh checkout
    without its outputs, where every one comes back from git history."""
    assets = "".join(f"  a{i}: {{prompt: 'poster {i}', seed: {i + 1}}}\n" for i in range(n))
    project.manifest(f"version: 1\ndefaults: {{width: 64, height: 64}}\nassets:\n{assets}")
    assert project.build().exit_code == 0
    root = project.root
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "built")
    for path in (root / "assets").iterdir():
        path.unlink()
    shutil.rmtree(root / ".flexforge")


def stalled_restore(project: Project, tmp_path: Path, n: int, stall_after: int) -> subprocess.Popen[str]:
    """A build of `committed_project`, its restore pass stalled once `stall_after` outputs are
    written (`tmp_path/bin/go` lets it go on)."""
    committed_project(project, n)
    folder = project.root / "assets"
    env, marker = stalling_git(tmp_path / "bin", stall_after)
    proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "draft", env=env)
    wait_for(lambda: marker.exists() and len(list(folder.iterdir())) >= stall_after, "a stalled restore")
    return proc


def test_a_restore_pass_killed_midway_is_restored_again_never_reported_drifted(
    project: Project, tmp_path: Path
) -> None:
    n, stall_after = 24, 8
    # Every output comes back from git, written in place (no temp file, no rename) under the
    # intent record.
    proc = stalled_restore(project, tmp_path, n, stall_after)
    root, folder = project.root, project.root / "assets"
    lock = git(root, "show", "HEAD:flexforge.lock").encode()
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.communicate(timeout=60)
    written = sorted(folder.iterdir())
    assert stall_after <= len(written) < n, "killed too late to prove anything"
    assert (root / "flexforge.lock").read_bytes() == lock  # restores wait for the lock write
    assert (root / ".flexforge" / "writing.json").is_file()
    # A power cut would tear a file mid-write: neither the lock's bytes nor anyone's edit.
    torn = written[0]
    os.truncate(torn, torn.stat().st_size // 2)

    result = project.run("plan", "--json", "--provider", "draft")
    plan = {a["id"]: (a["action"], a["reasons"]) for a in result.json()["assets"]}
    assert plan[torn.stem] == ("restore", ["interrupted restore"])
    assert {action for action, _ in plan.values()} == {"none", "restore"}, plan
    assert sum(action == "none" for action, _ in plan.values()) == len(written) - 1

    rebuilt = project.build()
    assert rebuilt.exit_code == 0 and "0 generated" in rebuilt.stderr, rebuilt.stderr
    assert git(root, "status", "--porcelain", "--", "assets", "flexforge.lock") == ""
    assert not (root / ".flexforge" / "writing.json").exists()
    assert not list(root.rglob("*.ff-*.tmp"))
    assert set(project.plan().values()) == {"none"}


def test_an_output_folder_swapped_for_a_link_mid_restore_sends_nothing_outside(
    project: Project, tmp_path: Path
) -> None:
    n, stall_after = 24, 8
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a20.png").write_bytes(b"precious, not flexforge's")
    proc = stalled_restore(project, tmp_path, n, stall_after)
    root, folder = project.root, project.root / "assets"
    # Mid-build, after every check on the folder: the folder moved away and a link out put there.
    folder.rename(root / "moved")
    folder.symlink_to(outside, target_is_directory=True)
    (tmp_path / "bin" / "go").touch()
    proc.communicate(timeout=120)
    assert sorted(p.name for p in outside.iterdir()) == ["a20.png"]
    assert (outside / "a20.png").read_bytes() == b"precious, not flexforge's"
    # What was restored went where the checks saw the folder: inside the project.
    assert len(list((root / "moved").glob("*.png"))) == n


def test_a_disk_that_fills_mid_restore_leaves_nothing_drifted_and_the_next_build_restores_free(
    tmp_path: Path,
) -> None:
    """Reverted prompts restore bigger images over smaller ones, on a disk that fills halfway:
    some files end torn, the lock keeps its old entries for them. Neither the reverted nor the
    un-reverted manifest ever calls them edited by hand, and once there is room one build
    restores everything from git history."""
    n = 12
    origin = Project(tmp_path / "origin")
    big = "".join(f"  a{i}: {{prompt: 'poster {i}', seed: {i + 1}}}\n" for i in range(n))
    origin.manifest(f"version: 1\ndefaults: {{width: 512, height: 512}}\nassets:\n{big}")
    assert origin.build().exit_code == 0
    git(origin.root, "init", "-q", "-b", "main")
    commit = ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam"]
    git(origin.root, "add", "-A")
    git(origin.root, *commit, "big")
    v1 = (origin.root / "flexforge.yaml").read_text()
    small = v1.replace("width: 512, height: 512", "width: 64, height: 64")
    (origin.root / "flexforge.yaml").write_text(small)
    assert origin.build().exit_code == 0
    git(origin.root, *commit, "small")
    (origin.root / "flexforge.yaml").write_text(v1)
    git(origin.root, *commit, "back to big")
    with tmpfs(tmp_path / "disk", size="4m") as disk:
        git(tmp_path, "clone", "-q", "--no-local", str(origin.root), str(disk / "clone"))
        clone = Project(disk / "clone")
        fill(disk)
        filler = disk / "filler"
        os.truncate(filler, filler.stat().st_size - 160 * 1024)  # room for a few restores
        full = clone.build()
        assert full.exit_code == 1 and "No space left on device" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr and not list(clone.root.rglob("*.ff-*.tmp"))
        assert (clone.root / ".flexforge" / "writing.json").is_file()
        plan = clone.plan()
        assert set(plan.values()) <= {"none", "restore"}, plan
        # The prompts put back as the lock has them: the torn files are the lock's key's outputs
        # now, and still restored, not `drifted`.
        (clone.root / "flexforge.yaml").write_text(small)
        plan = clone.plan()
        assert set(plan.values()) <= {"none", "restore"} and "restore" in plan.values(), plan
        filler.unlink()
        rebuilt = clone.build()
        assert rebuilt.exit_code == 0 and "0 generated" in rebuilt.stderr, rebuilt.stderr
        assert git(clone.root, "status", "--porcelain", "--", "assets", "flexforge.lock") == ""
        assert not (clone.root / ".flexforge" / "writing.json").exists()


def test_a_restore_pass_stopped_by_sigterm_records_what_it_wrote_and_nothing_after(
    project: Project, tmp_path: Path
) -> None:
    """SIGTERM mid-restore, git's stream then going on: exit 143, no temp file left, every file
    there matches the lock, nothing drifted, and the next build finishes the rest free. (That the
    streaming thread writes nothing in place after the last lock write: test_outputs.py.)"""
    n, stall_after = 24, 8
    proc = stalled_restore(project, tmp_path, n, stall_after)
    root = project.root
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the build has stopped and written its lock; then git's stream goes on
    (tmp_path / "bin" / "go").touch()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert not list(root.rglob("*.ff-*.tmp"))
    recorded = {a for a, e in project.lock()["assets"].items() if (root / e["out"]).is_file()}
    for asset_id in recorded:
        entry = project.lock()["assets"][asset_id]
        assert hashlib.sha256((root / entry["out"]).read_bytes()).hexdigest() == entry["sha256"]
    assert len(list((root / "assets").iterdir())) < n  # stopped before the end
    assert {action for action in project.plan().values()} <= {"none", "restore"}
    rebuilt = project.build()
    assert rebuilt.exit_code == 0 and "0 generated" in rebuilt.stderr, rebuilt.stderr
    assert git(root, "status", "--porcelain", "--", "assets", "flexforge.lock") == ""
    assert not (root / ".flexforge" / "writing.json").exists()
