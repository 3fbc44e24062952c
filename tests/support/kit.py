"""The launch-kit example as a real built project in a git repository, for gallery and diff tests.

Built once per test session with the draft provider, then copied for each test (a build takes
seconds on a shared machine; a copy takes milliseconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers import Project
from tests.support.spawn import run_flexforge

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "launch-kit"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull}
    proc = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def commit(project: Project, message: str) -> str:
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "--allow-empty", "-m", message)
    return git(project.root, "rev-parse", "HEAD")


def flexforge(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """flexforge in its own process: where an event loop already runs in this one (Playwright's
    sync API), the in-process CLI cannot start its own."""
    return run_flexforge("-C", str(root), *args, stdin=subprocess.DEVNULL)


def make_kit(dest: Path, template: Path) -> Project:
    """A copy of the built, committed example at `dest` (the template is made on first use)."""
    if not (template / "flexforge.lock").is_file():
        shutil.copytree(
            EXAMPLE,
            template,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".flexforge", "assets", "site"),
        )
        # The example leaves its outputs out of git (README's first command builds it); a real
        # project commits them, and the diff reads them from history.
        (template / ".gitignore").unlink()
        result = flexforge(template, "build", "--provider", "draft", "-q")
        assert result.returncode == 0, result.stderr
        git(template, "init", "-q", "-b", "main")
        commit(Project(template), "launch kit")
    shutil.copytree(template, dest, symlinks=True)
    return Project(dest)
