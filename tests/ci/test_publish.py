"""Commit-back after a CI build, against a local bare repository standing in for GitHub's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.ci.conftest import Actions, git


@pytest.fixture
def origin(actions: Actions, tmp_path: Path) -> Path:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(actions.repo.root), str(bare)], check=True)
    git(actions.repo.root, "remote", "add", "origin", str(bare))
    git(actions.repo.root, "fetch", "-q", "origin")
    sha = git(actions.repo.root, "rev-parse", "HEAD")
    actions.event("push", {"before": sha}, sha)
    return bare


def _changed_files(bare: Path, rev: str) -> set[str]:
    return set(git(bare, "diff-tree", "--no-commit-id", "--name-only", "-r", rev).split())


def test_build_commits_the_lock_and_its_images_back_and_nothing_else(actions: Actions, origin: Path) -> None:
    actions.repo.edit("A flat logo", "A flat logo with the word 'RED'")
    actions.repo.commit("redder logo (prompt only)")
    git(actions.repo.root, "push", "-q", "origin", "main")
    (actions.repo.root / "notes.txt").write_text("not flexforge's")
    result = actions.run("run", "--command", "build", "--publish", "push")
    assert result.exit_code == 0, result.output
    commit = actions.outputs()["commit"]
    assert git(origin, "rev-parse", "main") == commit
    assert _changed_files(origin, commit) == {"site/flexforge.lock", "site/assets/logo.png"}
    assert git(origin, "log", "-1", "--format=%s", "main") == "flexforge: build images"
    assert actions.github.requests == []


def test_a_build_with_nothing_new_commits_nothing(actions: Actions, origin: Path) -> None:
    before = git(origin, "rev-parse", "main")
    result = actions.run("run", "--command", "build", "--publish", "push")
    assert result.exit_code == 0, result.output
    assert actions.outputs()["commit"] == ""
    assert git(origin, "rev-parse", "main") == before


def test_a_rejected_push_opens_a_pull_request_instead(actions: Actions, origin: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(origin), str(other)], check=True)
    (other / "README").write_text("moved on")
    git(other, "add", "README")
    git(other, "commit", "-q", "-m", "someone else")
    git(other, "push", "-q", "origin", "main")
    actions.repo.edit("A flat logo", "A flat logo with the word 'RED'")
    result = actions.run("run", "--command", "build", "--publish", "push")
    assert result.exit_code == 0, result.output
    commit = actions.outputs()["commit"]
    branch = "flexforge/images-42"
    assert git(origin, "rev-parse", branch) == commit
    opened = [r for r in actions.github.writes() if r.path == "/repos/acme/site/pulls"]
    assert len(opened) == 1
    assert opened[0].body["head"] == branch and opened[0].body["base"] == "main"
    assert actions.outputs()["pull-request-url"].endswith("/pull/1")


def test_the_token_reaches_git_through_the_environment_only(actions: Actions) -> None:
    from flexforge.ci.publish import _env

    env = _env("ghs_secret", "https://github.com")
    key = next(k for k, v in env.items() if k.startswith("GIT_CONFIG_KEY_") and "extraheader" in v)
    assert env[key] == "http.https://github.com/.extraheader"
    assert "ghs_secret" not in env[key.replace("KEY", "VALUE")]  # base64, as git's header wants


def test_only_plain_files_inside_the_project_are_staged(actions: Actions, tmp_path: Path) -> None:
    from flexforge.ci.publish import owned_paths
    from flexforge.lockfile import read_lock

    project = actions.repo.project
    lock = read_lock(project / "flexforge.lock")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (project / "assets" / "link.png").symlink_to(outside)
    (project / ".git").mkdir()
    (project / ".git" / "config.png").write_bytes(b"x")
    entry = next(iter(lock.entries.values()))
    for out in ("../../outside.png", "assets/link.png", ".git/config.png", "../.git/HEAD"):
        lock.entries[f"x{len(lock.entries)}"] = type(entry)(
            **{**{f: getattr(entry, f) for f in entry.__dataclass_fields__}, "out": out}
        )
    staged = owned_paths(lock, project, actions.repo.root)
    assert staged == sorted(
        ["site/flexforge.lock", "site/assets/hero.png", "site/assets/square.png", "site/assets/logo.png"]
    )
