"""Channel presets: the shipped catalog, project presets, `size:` anywhere a size fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from flexforge.presets import CATALOG_PATH, MAX_PIXELS, catalog, generated_size
from tests.helpers import Project


def test_catalog_generated_sizes_follow_the_rule() -> None:
    doc = json.loads(CATALOG_PATH.read_text())
    assert doc["version"] >= 1
    for name in (
        "instagram-square",
        "instagram-portrait",
        "instagram-story",
        "facebook-feed",
        "facebook-link",
        "linkedin-post",
        "x-post",
        "youtube-thumbnail",
        "open-graph",
        "email-header",
        "iab-medium-rectangle",
        "iab-leaderboard",
        "iab-half-page",
        "iab-wide-skyscraper",
    ):
        assert name in catalog(), name
    for preset in catalog().values():
        gw, gh = preset.generated
        assert gw % 16 == 0 and gh % 16 == 0 and gw * gh <= MAX_PIXELS
        assert gw >= preset.delivered[0] and gh >= preset.delivered[1]
        assert preset.generated == generated_size(*preset.delivered), preset.name


@pytest.mark.parametrize(
    ("delivered", "generated"),
    [((1080, 1920), (1088, 1920)), ((1280, 720), (1280, 720)), ((1200, 628), (1216, 640))],
)
def test_generated_size_examples(delivered: tuple[int, int], generated: tuple[int, int]) -> None:
    assert generated_size(*delivered) == generated


def test_presets_deliver_exact_sizes(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        defaults: {size: square-small}
        presets:
          square-small: {size: 100x100}
          banner: {size: 300x50, generate: 320x64}
        assets:
          a: {prompt: "poster"}
          b: {prompt: "poster", size: banner}
          c-{ch}:
            matrix: {ch: [email-header, iab-leaderboard]}
            size: "{ch}"
            prompt: "poster for {ch}"
          d: {prompt: "poster", size: 200x120}
        """
    )
    assert project.build().exit_code == 0
    sizes = {
        rel: Image.open(tmp_path / rel).size
        for rel in (
            "assets/a.png",
            "assets/b.png",
            "assets/c-email-header.png",
            "assets/c-iab-leaderboard.png",
            "assets/d.png",
        )
    }
    assert sizes == {
        "assets/a.png": (100, 100),
        "assets/b.png": (300, 50),
        "assets/c-email-header.png": (600, 200),
        "assets/c-iab-leaderboard.png": (728, 90),
        "assets/d.png": (200, 120),
    }
    explained = project.run("explain", "b", "--provider", "draft").stdout
    assert '"final_size": [300, 50]' in explained and '"width": 320' in explained


def test_preset_equals_hand_written_size(tmp_path: Path) -> None:
    a, b = Project(tmp_path / "a"), Project(tmp_path / "b")
    a.manifest('version: 1\nassets:\n  x: {prompt: "p", seed: 3, size: instagram-story}\n')
    b.manifest(
        'version: 1\nassets:\n  x: {prompt: "p", seed: 3, width: 1088, height: 1920, final_size: 1080x1920}\n'
    )
    plans = [p.run("plan", "--json", "--provider", "draft") for p in (a, b)]
    assert all(p.exit_code == 0 for p in plans)
    ea, eb = (p.run("explain", "x", "--provider", "draft").stdout for p in (a, b))
    assert ea.splitlines()[-1] == eb.splitlines()[-1]  # the key line


def test_unknown_presets_and_clashes_are_located(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        presets:
          odd: {size: 100x100, generate: 90x90}
        assets:
          a: {prompt: "p", size: instagram-stori}
          b: {prompt: "p", size: open-graph, width: 512}
          c-{ch}:
            matrix: {ch: [x-post, nope]}
            size: "{ch}"
            prompt: "p"
        """
    )
    result = project.run("validate")
    assert result.exit_code == 1
    err = result.stderr
    assert "flexforge.yaml:3:" in err and "generate 90x90 must be multiples of 16" in err
    assert (
        "flexforge.yaml:5:" in err
        and "unknown size preset 'instagram-stori' (did you mean 'instagram-story'?)" in err
    )
    assert "flexforge.yaml:6:" in err and "`size:` already sets width" in err
    assert "flexforge.yaml:9:" in err and "unknown size preset 'nope'" in err
