"""`flexforge init`: the starter project, and the GitHub workflows at the repository root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import Project

ACTION = "acme/flexforge@" + "1" * 40


def _git_repo(root: Path, branch: str = "trunk") -> None:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(root)], check=True)


def test_init_in_a_subfolder_writes_workflows_at_the_git_root_with_the_working_directory(
    tmp_path: Path,
) -> None:
    _git_repo(tmp_path / "repo")
    project = Project(tmp_path / "repo" / "web" / "img")
    result = project.run("init", "--action", ACTION)
    assert result.exit_code == 0, result.stderr
    workflows = tmp_path / "repo" / ".github" / "workflows"
    names = sorted(p.name for p in workflows.iterdir())
    assert names == [
        "flexforge-build-web-img.yml",
        "flexforge-check-web-img.yml",
        "flexforge-comment-web-img.yml",
    ]
    assert not (project.root / ".github").exists()
    check = yaml.safe_load((workflows / "flexforge-check-web-img.yml").read_text())
    step = check["jobs"]["review"]["steps"][1]
    assert step["uses"] == ACTION and step["with"]["working-directory"] == "web/img"
    assert check[True]["pull_request"]["paths"] == ["web/img/**"]  # YAML 1.1 reads `on` as True
    build = yaml.safe_load((workflows / "flexforge-build-web-img.yml").read_text())
    assert build[True]["push"]["branches"] == ["trunk"]
    comment = yaml.safe_load((workflows / "flexforge-comment-web-img.yml").read_text())
    assert comment[True]["workflow_run"]["workflows"] == [check["name"]] == ["flexforge check (web/img)"]


def test_init_at_the_root_names_the_workflows_plainly(tmp_path: Path) -> None:
    _git_repo(tmp_path / "repo", "main")
    project = Project(tmp_path / "repo")
    assert project.run("init", "--action", ACTION).exit_code == 0
    check = yaml.safe_load((project.root / ".github/workflows/flexforge-check.yml").read_text())
    assert check["name"] == "flexforge check"
    assert check["jobs"]["review"]["steps"][1]["with"]["working-directory"] == "."


def test_workflows_only_adds_to_an_existing_project_and_keeps_its_files(tmp_path: Path) -> None:
    _git_repo(tmp_path / "repo")
    project = Project(tmp_path / "repo")
    project.manifest("version: 1\nassets: {}\n")
    mine = project.write(".github/workflows/flexforge-check.yml", "# mine\n")
    result = project.run("init", "--workflows-only", "--action", ACTION)
    assert result.exit_code == 0, result.stderr
    assert (project.root / "flexforge.yaml").read_text() == "version: 1\nassets: {}\n"
    assert mine.read_text() == "# mine\n"
    assert (project.root / ".github/workflows/flexforge-build.yml").exists()
    assert (project.root / ".flexforge/.gitignore").exists()
    assert project.run("init", "--workflows-only", "--action", ACTION, "--force").exit_code == 0
    assert mine.read_text() != "# mine\n"


def test_init_on_an_existing_manifest_points_at_workflows_only(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.manifest("version: 1\nassets: {}\n")
    result = project.run("init")
    assert result.exit_code == 1 and "--workflows-only" in result.stderr


@pytest.mark.parametrize(
    "bad", ["acme/flexforge@v1", "acme/flexforge", "acme/flexforge@main", "x y@" + "0" * 40]
)
def test_the_action_must_be_pinned_by_commit(tmp_path: Path, bad: str) -> None:
    project = Project(tmp_path / "p")
    result = project.run("init", "--action", bad)
    assert result.exit_code == 2 and "40-hex sha" in result.stderr
    assert not (project.root / "flexforge.yaml").exists()


def test_without_a_known_action_no_workflow_is_written_and_init_says_how(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    result = project.run("init")
    assert result.exit_code == 0
    assert "--action OWNER/flexforge@<commit sha>" in result.stdout
    assert not (project.root / ".github").exists()


def test_the_action_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXFORGE_ACTION", ACTION)
    project = Project(tmp_path / "p")
    assert project.run("init").exit_code == 0
    assert ACTION in (project.root / ".github/workflows/flexforge-build.yml").read_text()


def test_the_starter_manifest_points_its_editor_at_a_schema_that_is_there(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    assert project.run("init").exit_code == 0
    first = (project.root / "flexforge.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=flexforge.schema.json"
    assert (project.root / "flexforge.schema.json").is_file()
