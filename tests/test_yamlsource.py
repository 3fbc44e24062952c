"""The YAML reader's limits: big honest manifests pass, alias bombs do not."""

from __future__ import annotations

from flexforge.yamlsource import MAX_NODES, parse_yaml


def test_a_big_flat_manifest_passes_the_value_cap() -> None:
    """100,000 assets are ~700,000 values in ~13 MB: the cap grows with the file's text."""
    lines = ["version: 1", "assets:"]
    lines += [f"  a{i:06d}: {{prompt: p{i}, seed: {i}, references: [r{i}.png, a{i}]}}" for i in range(60_000)]
    doc = parse_yaml(("\n".join(lines) + "\n").encode())
    assert not doc.problems
    assert len(doc.data["assets"]) == 60_000  # more than MAX_NODES values in all
    assert MAX_NODES < 60_000 * 5


def test_an_alias_bomb_of_empty_lists_is_still_refused() -> None:
    """Values out of few bytes: a small file keeps the fixed cap."""
    text = "a: &a [[], [], [], [], [], [], [], [], [], []]\n"
    for level in range(1, 7):
        prev = "a" if level == 1 else f"l{level - 1}"
        text += f"l{level}: &l{level} [{', '.join(['*' + prev] * 10)}]\n"
    doc = parse_yaml(text.encode())
    assert any("alias bomb" in p.message for p in doc.problems)
