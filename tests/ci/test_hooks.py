"""The pre-commit hooks: each staged file is checked with the project it belongs to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flexforge.ci.hooks import projects_of
from flexforge.cli import cli
from tests.ci.conftest import Repo

ROOT = Path(__file__).resolve().parents[2]


def hook(repo: Repo, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-C", str(repo.root), "ci", "hook", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_files_map_to_the_nearest_manifest_above_them(repo: Repo) -> None:
    (repo.root / "other").mkdir()
    found = projects_of(
        ["site/assets/logo.png", "site/flexforge.lock", "README.md", "other/x.png"], repo.root
    )
    assert found == [repo.project.resolve()]


def test_validate_hook_reports_errors_with_the_projects_path(repo: Repo) -> None:
    assert hook(repo, "validate", "site/flexforge.yaml") == (0, "")
    repo.edit("  steps: 4", "  steps: 80")
    code, output = hook(repo, "validate", "site/flexforge.yaml")
    assert code == 1
    assert output.startswith("site/flexforge.yaml:6:10: defaults.steps: 80 is greater than the maximum of 50")


def test_frozen_hook_fails_when_images_are_stale_and_passes_when_clean(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEXFORGE_PROVIDER", "draft")  # what built these images
    assert hook(repo, "frozen", "site/assets/logo.png")[0] == 0
    repo.edit("A flat logo", "A flat logo, in green")
    code, output = hook(repo, "frozen", "site/flexforge.yaml")
    assert code == 1 and "site: --frozen: 1 asset would be generated" in output


def test_files_outside_any_project_run_nothing(repo: Repo) -> None:
    assert hook(repo, "frozen", "README.md") == (0, "")


def test_the_hooks_file_names_both_hooks_as_python_hooks() -> None:
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"flexforge-validate", "flexforge-frozen"}
    assert {h["language"] for h in hooks.values()} == {"python"}
    assert hooks["flexforge-validate"]["entry"] == "flexforge ci hook validate"


def test_pre_commit_runs_both_hooks_from_this_repository(repo: Repo, tmp_path: Path) -> None:
    """pre-commit itself installs this repository as a hook repository (a venv, pip) and runs."""
    import shutil
    import subprocess
    import sys

    tool = shutil.which("pre-commit", path=str(Path(sys.executable).parent)) or shutil.which("pre-commit")
    if tool is None:
        pytest.fail("pre-commit is not installed: pip install -e '.[test]'")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit"), "FLEXFORGE_PROVIDER": "draft"}

    def try_repo(hook: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "try-repo", str(ROOT), hook, "--files", "site/flexforge.yaml", "site/assets/logo.png"],
            cwd=repo.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    ok = try_repo("flexforge-frozen")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "flexforge build --frozen" in ok.stdout and "Passed" in ok.stdout
    repo.edit("  steps: 4", "  steps: 80")
    bad = try_repo("flexforge-validate")
    assert bad.returncode == 1
    assert "site/flexforge.yaml:6:10: defaults.steps: 80 is greater than the maximum of 50" in bad.stdout
