"""The action's cache design, end to end: a build cancelled mid-way on one runner, its `.flexforge/`
and machine key restored on a fresh runner from a fresh clone, pays for nothing twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexforge.emulator.testing import running_emulator
from tests.ci.conftest import Repo, git
from tests.support.emulator import FAST_ENV, SECRET

NEW = "".join(f'  new{i}:\n    prompt: "A poster number {i}"\n    seed: {i}\n' for i in range(4))


def _runner_env(tmp: Path, name: str, emu_env: dict[str, str]) -> dict[str, str]:
    runner = tmp / name
    runner.mkdir()
    (runner / "event.json").write_text(json.dumps({"before": "0" * 40}))
    return {
        **os.environ,
        **emu_env,
        **FAST_ENV,
        "BFL_API_KEY": SECRET,
        "HOME": str(runner / "home"),
        "FLEXFORGE_CACHE_DIR": str(runner / "cache"),
        "FLEXFORGE_DATA_DIR": str(runner / "flexforge-data"),
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_EVENT_PATH": str(runner / "event.json"),
        "GITHUB_OUTPUT": str(runner / "output"),
        "GITHUB_STEP_SUMMARY": str(runner / "summary"),
        "FLEXFORGE_CI_OUT_DIR": str(runner / "out"),
    }


def _ci_build(clone: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "flexforge",
        "-C",
        str(clone / "site"),
        "ci",
        "run",
        "--command",
        "build",
        "--provider",
        "emulator",
        "--comment",
        "false",
    ]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _journal(clone: Path) -> list[Path]:
    folder = clone / "site" / ".flexforge" / "journal"
    return list(folder.glob("*.json")) if folder.is_dir() else []


@pytest.fixture
def origin(repo: Repo, tmp_path: Path) -> Path:
    (repo.project / "flexforge.yaml").write_text((repo.project / "flexforge.yaml").read_text() + NEW)
    repo.commit("four new posters")
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(bare)], check=True)
    return bare


def _cancelled_then_resumed(origin: Path, tmp_path: Path, *, restore_key: bool) -> dict[str, int]:
    with running_emulator(accepted_keys=(SECRET,), latency=3.0) as emu:
        first = tmp_path / "first"
        git(tmp_path, "clone", "-q", str(origin), str(first))
        env = _runner_env(tmp_path, "runner1", emu.env())
        proc = _ci_build(first, env)
        deadline = time.monotonic() + 60
        # Six assets can start at once (the draft-built images all regenerate for the emulator;
        # `square` waits for `hero`): cancel when all six are paid for and journaled.
        while len(_journal(first)) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert len(_journal(first)) == 6, proc.communicate()[0]
        os.killpg(proc.pid, signal.SIGINT)  # the runner cancels the job: every process gets it
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130, out
        assert emu.stats()["submissions"] == 6
        # actions/cache: save what the action names, restore it on a fresh runner and clone.
        second = tmp_path / "second"
        git(tmp_path, "clone", "-q", str(origin), str(second))
        shutil.copytree(first / "site" / ".flexforge", second / "site" / ".flexforge")
        env2 = _runner_env(tmp_path, "runner2", emu.env())
        if restore_key:
            shutil.copytree(env["FLEXFORGE_DATA_DIR"], env2["FLEXFORGE_DATA_DIR"])
        proc = _ci_build(second, env2)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out
        stats = emu.stats()
        return {"submissions": stats["submissions"], "duplicates": stats["duplicates"]}


def test_a_cancelled_build_resumes_on_a_fresh_runner_without_paying_twice(
    origin: Path, tmp_path: Path
) -> None:
    # The six journaled tasks are polled again, and only `square` is new.
    assert _cancelled_then_resumed(origin, tmp_path, restore_key=True) == {"submissions": 7, "duplicates": 0}


def test_without_the_machine_key_the_journal_is_set_aside(origin: Path, tmp_path: Path) -> None:
    # Why the action caches FLEXFORGE_DATA_DIR: records sealed elsewhere are not trusted.
    assert _cancelled_then_resumed(origin, tmp_path, restore_key=False)["duplicates"] == 6
