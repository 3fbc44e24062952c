"""Variants and a pick: N candidates with distinct pinned seeds, a free switch, more on demand."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Project

MANIFEST = """
version: 1
defaults: {width: 128, height: 128}
assets:
  hero: {prompt: "a red bicycle", variants: 3}
  post: {from: hero, size: 100x50}
  ad: {prompt: "an ad", references: [hero]}
"""


def _lock(project: Project) -> dict[str, dict[str, object]]:
    return project.lock()["assets"]  # type: ignore[no-any-return]


def test_variants_make_candidates_with_distinct_pinned_seeds(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    lock = _lock(project)
    seeds = {lock[f"hero--{k}"]["seed"] for k in (1, 2, 3)}
    assert len(seeds) == 3
    # The first is selected by default; only it is at `out`, the others under variants/.
    assert lock["hero"]["seed"] == 1 and lock["hero"]["sha256"] == lock["hero--1"]["sha256"]
    assert project.read("assets/hero.png") == project.read("variants/hero/1.png")
    assert sorted(p.name for p in (tmp_path / "variants/hero").iterdir()) == ["1.png", "2.png", "3.png"]


def test_a_fixed_seed_gives_consecutive_candidate_seeds(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST.replace("variants: 3", "variants: 2, seed: 40"))
    assert project.build().exit_code == 0
    assert [_lock(project)[f"hero--{k}"]["seed"] for k in (1, 2)] == [40, 41]


def test_pick_switches_for_free_and_dependents_follow(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    first = project.read("assets/hero.png")
    result = project.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert "candidate 2 of 3 selected, no API call" in result.stdout
    assert "0 generated" not in result.stderr or "restored" in result.stderr
    assert project.read("assets/hero.png") == project.read("variants/hero/2.png") != first
    assert _lock(project)["hero"]["seed"] == 2
    plan = project.plan()
    assert plan["post"] == "regenerate" and plan["ad"] == "regenerate" and plan["hero--1"] == "none"
    assert project.build().exit_code == 0
    # Back to the first pick: from the cache, and the dependents' old images with it.
    result = project.run("pick", "hero", "1", "--provider", "draft")
    assert "restored (from cache, no API call)" in result.stderr
    assert project.read("assets/hero.png") == first
    assert set(project.plan().values()) == {"none", "restore"} or set(project.plan().values()) == {"none"}


def test_pick_restores_from_git_history_in_a_fresh_clone(tmp_path: Path) -> None:
    import subprocess

    project = Project(tmp_path / "origin")
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    assert project.run("pick", "hero", "3", "--provider", "draft").exit_code == 0

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", cwd=project.root)
    git("add", "-A", cwd=project.root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pick 3", cwd=project.root)
    git("clone", "-q", str(project.root), str(tmp_path / "clone"), cwd=tmp_path)
    clone = Project(tmp_path / "clone")
    result = clone.run("pick", "hero", "1", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert clone.read("assets/hero.png") == clone.read("variants/hero/1.png")


def test_more_adds_candidates_without_touching_the_others(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    before = _lock(project)
    result = project.run("pick", "hero", "--more", "2", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert "variants: 3 -> 5" in result.stderr
    assert 'hero: {prompt: "a red bicycle", variants: 5}' in (tmp_path / "flexforge.yaml").read_text()
    after = _lock(project)
    for k in (1, 2, 3):
        assert after[f"hero--{k}"] == before[f"hero--{k}"]
    assert {"hero--4", "hero--5"} <= set(after)
    assert after["hero"]["sha256"] == before["hero"]["sha256"]
    assert project.plan()["ad"] == "none"


def test_bad_picks_are_clear_errors(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    result = project.run("pick", "hero", "4", "--provider", "draft")
    assert result.exit_code == 2 and "hero has candidates 1..3" in result.stderr
    result = project.run("pick", "post", "1")
    assert result.exit_code == 2 and "post has no candidates: add `variants: N`" in result.stderr
    result = project.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 1 and "would have to be generated (paid) first" in result.stderr
    project.manifest(MANIFEST.replace("variants: 3", "variants: 3, pick: 5"))
    result = project.run("validate")
    assert result.exit_code == 1 and "flexforge.yaml:4:" in result.stderr
    assert "pick 5: there are 3 candidates (1..3)" in result.stderr
