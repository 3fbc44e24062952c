"""YAML -> data with positions: the shortcuts taken for speed change no answer."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flexforge.yamlsource import MAX_DEPTH, MAX_NODES, _may_nest_deeply, _nesting_bound, parse_yaml


def _line_by_line(text: str) -> int:
    """The deepest count _may_nest_deeply's loop reaches on any line (without stopping early)."""
    depth = best = 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        peak = depth
        for char in stripped:
            if char in "[{":
                depth += 1
                peak = max(peak, depth)
            elif char in "]}":
                depth = max(0, depth - 1)
        best = max(best, peak + stripped.count("- ") + (len(line) - len(stripped)) // 2)
    return best


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["[", "]", "{", "}", "- ", "-", "  ", " ", "\n", "a", '"']), max_size=80))
def test_the_whole_file_bound_is_never_below_any_line(pieces: list[str]) -> None:
    text = "".join(pieces)
    bound = _nesting_bound(text)
    assert bound > MAX_DEPTH or bound >= _line_by_line(text)


def test_deep_nesting_still_takes_the_safe_loader() -> None:
    assert _may_nest_deeply("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n")
    assert _may_nest_deeply("\n".join("  " * i + f"k{i}:" for i in range(MAX_DEPTH + 3)))
    assert not _may_nest_deeply("assets:\n  a: {prompt: x, references: [b, c]}\n" * 500)


SCALARS = st.one_of(
    st.text(max_size=8),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["yes", "no", "on", "0x1F", "1e3", "~", "null", "2001-01-01", "'quoted'", "12"]),
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SCALARS, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(DOCS, st.sampled_from([None, False, True]))
def test_values_are_what_pyyaml_makes_of_them(doc: object, flow: bool | None) -> None:
    text = yaml.safe_dump({"root": doc}, default_flow_style=flow, allow_unicode=True)
    parsed = parse_yaml(text.encode())
    expected = yaml.safe_load(text)
    if not parsed.problems:
        keyed = {str(k): v for k, v in expected.items()}
        assert _stringify_keys(parsed.data) == _stringify_keys(keyed)


def _stringify_keys(node: object) -> object:
    """parse_yaml keeps every mapping key as text (manifests have no other kind)."""
    if isinstance(node, dict):
        return {str(k): _stringify_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_stringify_keys(v) for v in node]
    return node


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


def test_a_key_that_is_a_number_too_long_is_a_problem_not_a_crash() -> None:
    """`? 999...9` (5,000 digits) as a key: Python refuses to make that int; the manifest gets
    a message at the key, as the same number as a value does."""
    digits = "9" * 5000
    doc = parse_yaml(f"version: 1\nextra:\n  ? {digits}\n  : 1\n".encode())
    assert [(p.line, p.col) for p in doc.problems] == [(3, 5)]
    assert "too long" in doc.problems[0].message


@pytest.mark.parametrize("tagged", ["!!timestamp soon", "!!bool maybe", '!!int ""', '!!float ""'])
def test_a_tagged_scalar_its_tag_cannot_make_is_a_located_problem(tagged: str) -> None:
    """Regression: `!!bool maybe`, `!!timestamp soon`, an empty `!!int` made PyYAML's constructor
    fail with KeyError, AttributeError or IndexError: "internal error". As a value and as a key."""
    doc = parse_yaml(f"version: 1\nvars:\n  brand: {tagged}\n".encode())
    assert [(p.line, p.col, p.path) for p in doc.problems] == [(3, 10, ("vars", "brand"))]
    assert tagged.split()[0] in doc.problems[0].message
    doc = parse_yaml(f"version: 1\nvars:\n  ? {tagged}\n  : 1\n  brand: x\n".encode())
    assert [(p.line, p.col) for p in doc.problems] == [(3, 5)]
    assert doc.key_where(("vars", "brand")) == (5, 3)  # the mapping's keys named for a message
