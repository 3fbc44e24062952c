"""Selecting part of a set: glob patterns of ids and `--tag`, with dependencies pulled in."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Project

MANIFEST = """
version: 1
defaults: {width: 64, height: 64}
assets:
  hero-{p}:
    matrix: {p: [widget, gadget]}
    tags: [hero]
    prompt: "hero {p}"
  post-{p}-{ch}:
    matrix: {p: [widget, gadget], ch: [square, story]}
    tags: [social, "{ch}"]
    prompt: "post {p} {ch}"
    references: ["hero-{p}"]
  logo: {prompt: "logo", tags: [brand]}
"""


def test_glob_selects_matching_ids_and_their_dependencies(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert sorted(project.plan("post-widget-*")) == ["hero-widget", "post-widget-square", "post-widget-story"]


def test_tag_selects_tagged_assets_and_their_dependencies(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert sorted(project.plan("--tag", "story")) == [
        "hero-gadget",
        "hero-widget",
        "post-gadget-story",
        "post-widget-story",
    ]
    assert sorted(project.plan("--tag", "brand", "hero-gadget")) == ["hero-gadget", "logo"]


def test_build_and_status_take_the_same_selection(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build("--tag", "hero").exit_code == 0
    assert sorted(project.lock()["assets"]) == ["hero-gadget", "hero-widget"]
    status = project.run("status", "--json", "--provider", "draft", "hero-*").json()
    assert [row["id"] for row in status["assets"]] == ["hero-widget", "hero-gadget"]
    assert all(row["up_to_date"] for row in status["assets"])


def test_a_pattern_or_tag_that_selects_nothing_is_an_error(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    result = project.run("plan", "--provider", "draft", "poster-*")
    assert result.exit_code == 2 and "'poster-*' matches no asset id" in result.stderr
    result = project.run("build", "--provider", "draft", "--tag", "sotry")
    assert result.exit_code == 2 and "--tag sotry: no asset has this tag" in result.stderr
    assert not (tmp_path / "flexforge.lock").exists()
