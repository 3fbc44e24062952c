"""The no-op memo answers only when the full command would say the same."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flexforge import noop
from tests.helpers import Project, png
from tests.support.spawn import run_flexforge


def flexforge(
    project: Project, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_flexforge("-C", str(project.root), *args, env=env, timeout=60)


@pytest.fixture
def built(project: Project) -> Project:
    png(project.root / "ref.png")
    project.manifest("""
        version: 1
        defaults: {width: 128, height: 128}
        assets:
          a: {prompt: "first 'A'", seed: 1, references: [ref.png]}
          b: {prompt: "second", seed: 2, references: [a]}
    """)
    assert project.build().exit_code == 0
    assert project.build().exit_code == 0  # an up-to-date plan records the memo
    assert Path(noop._memo_path(str(project.root / "flexforge.yaml"))).exists()
    return project


def test_memo_answers_an_unchanged_build_and_plan(built: Project) -> None:
    result = flexforge(built, "build", "--provider", "draft")
    assert (result.returncode, result.stdout) == (0, "Up to date: 2 assets.\n")
    result = flexforge(built, "plan", "--provider", "draft", "--detailed-exitcode")
    assert result.returncode == 0
    assert (
        result.stdout == "Plan: 0 to create, 0 to regenerate, 0 to restore, 2 up to date; no cost (draft).\n"
    )
    assert flexforge(built, "-q", "build", "--provider", "draft").stdout == ""


def test_a_changed_manifest_falls_through(built: Project) -> None:
    built.edit("second", "third")
    result = flexforge(built, "plan", "--provider", "draft", "--detailed-exitcode")
    assert result.returncode == 2
    assert "b  regenerate (prompt)" in result.stdout


def test_a_changed_reference_falls_through(built: Project) -> None:
    png(built.root / "ref.png", color=(0, 0, 255))
    result = flexforge(built, "plan", "--provider", "draft")
    assert "a  regenerate (references)" in result.stdout


def test_a_hand_edited_output_falls_through(built: Project) -> None:
    png(built.root / "assets/b.png", size=(128, 128), color=(1, 1, 1))
    result = flexforge(built, "plan", "--provider", "draft")
    assert "b  drifted" in result.stdout


def test_another_provider_or_lock_falls_through(built: Project) -> None:
    result = flexforge(built, "plan", env={"FLEXFORGE_PROVIDER": "bfl"})
    assert "regenerate (generator: draft -> flux)" in result.stdout
    lock = built.root / "flexforge.lock"
    doc = json.loads(lock.read_text())
    doc["assets"]["b"]["key"] = "0" * 64
    lock.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    result = flexforge(built, "plan", "--provider", "draft")
    assert "b  restore" in result.stdout  # its real key is still in the object cache


def test_options_the_memo_does_not_cover_fall_through(built: Project) -> None:
    result = flexforge(built, "plan", "--provider", "draft", "-v")
    assert "= a" in result.stdout and "= b" in result.stdout
    result = flexforge(built, "plan", "--provider", "draft", "--json")
    assert '"action": "none"' in result.stdout


def test_a_deleted_output_falls_through(built: Project) -> None:
    Path(built.root / "assets/a.png").unlink()
    result = flexforge(built, "build", "--provider", "draft")
    assert result.returncode == 0
    assert "1 restored" in result.stderr
