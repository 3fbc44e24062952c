"""Content keys: what changes them, what never does, and how a change is named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flexforge.keys import changed, content_key, known_parts
from flexforge.manifest import Asset, load_manifest


@pytest.fixture
def asset(tmp_path: Path) -> Asset:
    (tmp_path / "flexforge.yaml").write_text(
        "version: 1\nassets:\n  hero:\n    prompt: a poster\n    width: 512\n    height: 512\n"
    )
    return load_manifest(tmp_path / "flexforge.yaml").assets["hero"]


def test_key_is_stable_and_ignores_id_and_output_path(asset: Asset) -> None:
    key = content_key(asset, "flux", 1, []).key
    assert content_key(asset, "flux", 1, []).key == key
    moved = dataclasses.replace(asset, id="masthead", out="img/elsewhere.png")
    assert content_key(moved, "flux", 1, []).key == key  # a rename or a move keeps the image


@pytest.mark.parametrize(
    ("change", "part"),
    [
        ({"prompt": "another poster"}, "prompt"),
        ({"width": 1024}, "params"),
        ({"model": "flux-2-flex", "steps": 20}, "params"),
    ],
)
def test_each_request_change_names_its_part(asset: Asset, change: dict[str, object], part: str) -> None:
    before = content_key(asset, "flux", 1, [])
    after = content_key(dataclasses.replace(asset, **change), "flux", 1, [])  # type: ignore[arg-type]
    assert after.key != before.key
    assert after.changed_parts(before.parts) == [part]


def test_seed_and_generator_changes(asset: Asset) -> None:
    base = content_key(asset, "draft", 1, [])
    assert content_key(asset, "draft", 2, []).changed_parts(base.parts) == ["seed"]
    assert content_key(asset, "flux", 1, []).changed_parts(base.parts) == ["generator: draft -> flux"]


def test_model_and_generator_change_together_reads_model(asset: Asset) -> None:
    base = content_key(asset, "draft", 1, [])
    other = content_key(dataclasses.replace(asset, model="flux-2-pro"), "flux", 1, [])
    # flex knobs are not sent to pro: its params change with it
    assert changed(other.parts, base.parts) == ["params", "model"]


def test_known_parts_agree_with_the_full_key_where_known(asset: Asset) -> None:
    full = content_key(asset, "flux", 5, []).parts
    assert known_parts(asset, "flux", 5, []) == full
    assert known_parts(asset, "flux", None, [])["seed"] == "None"
