"""A git repository with a built flexforge project in a subfolder, and a GitHub runner's files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flexforge.cli import cli
from tests.support.fake_github import TOKEN, FakeGitHub, fake_github

MANIFEST = """\
version: 1
defaults:
  model: flux-2-flex
  width: 64
  height: 64
  steps: 4
assets:
  hero:
    prompt: "A poster with the headline 'Hello'"
    seed: 1
  square:
    prompt: "The poster from image 1 as a square"
    references: [hero]
  logo:
    prompt: "A flat logo"
    seed: 3
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass
class Repo:
    root: Path
    project: Path

    def commit(self, message: str) -> str:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def flexforge(self, *args: str) -> Any:
        return CliRunner().invoke(cli, ["-C", str(self.project), *args], catch_exceptions=False)

    def edit(self, old: str, new: str) -> None:
        path = self.project / "flexforge.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))


@pytest.fixture
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
    }.items():
        monkeypatch.setenv(var, value)


@pytest.fixture
def repo(tmp_path: Path, git_identity: None) -> Repo:
    """Base commit: a project in site/ built with the draft renderer, images and lock committed."""
    root = tmp_path / "repo"
    project = root / "site"
    project.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (project / "flexforge.yaml").write_text(MANIFEST)
    r = Repo(root, project)
    result = r.flexforge("build", "--provider", "draft")
    assert result.exit_code == 0, result.output
    (project / ".gitignore").write_text(".flexforge/\n")
    r.commit("images")
    return r


@dataclass
class Actions:
    """The files and variables GitHub gives a step."""

    dir: Path
    repo: Repo
    github: FakeGitHub
    env: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.dir / "output.txt"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.md"

    def outputs(self) -> dict[str, str]:
        """Parse $GITHUB_OUTPUT's `name<<DELIMITER` blocks."""
        found: dict[str, str] = {}
        lines = self.output.read_text().split("\n") if self.output.exists() else []
        i = 0
        while i < len(lines):
            if "<<" in lines[i]:
                name, delimiter = lines[i].split("<<", 1)
                end = lines.index(delimiter, i + 1)
                found[name] = "\n".join(lines[i + 1 : end])
                i = end
            i += 1
        return found

    def pull_request(self, number: int, base: str, head: str, *, fork: bool = False) -> None:
        head_repo = "stranger/site" if fork else "acme/site"
        event = {
            "number": number,
            "pull_request": {
                "number": number,
                "base": {"sha": base, "ref": "main", "repo": {"full_name": "acme/site"}},
                "head": {"sha": head, "ref": "feature", "repo": {"full_name": head_repo}},
            },
        }
        self.event("pull_request", event, head)
        self.github.pulls[number] = event["pull_request"]

    def event(self, name: str, payload: dict[str, Any], sha: str) -> None:
        path = self.dir / "event.json"
        path.write_text(json.dumps(payload))
        self.env.update(GITHUB_EVENT_NAME=name, GITHUB_EVENT_PATH=str(path), GITHUB_SHA=sha)

    def run(self, *args: str, **env: str) -> Any:
        merged = {**self.env, **env}
        return CliRunner().invoke(
            cli, ["-C", str(self.repo.project), "ci", *args], env=merged, catch_exceptions=False
        )


@pytest.fixture
def actions(tmp_path: Path, repo: Repo) -> Iterator[Actions]:
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    with fake_github() as github:
        a = Actions(runner_dir, repo, github)
        a.env = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(a.output),
            "GITHUB_STEP_SUMMARY": str(a.summary),
            "GITHUB_REPOSITORY": "acme/site",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_API_URL": github.url,
            "GITHUB_RUN_ID": "42",
            "GITHUB_WORKSPACE": str(repo.root),
            "FLEXFORGE_CI_TOKEN": TOKEN,
            "FLEXFORGE_CI_OUT_DIR": str(runner_dir / "out"),
            "FLEXFORGE_CI_PROVIDER": "draft",
        }
        yield a
