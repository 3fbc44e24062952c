"""Splitting a build across runners: whole dependency groups, balanced, the same on every machine."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexforge.errors import UsageError
from flexforge.shards import components, parse_shard, split
from tests.helpers import Project
from tests.support.emulator import serve_builds
from tests.support.s3 import S3Server, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]


def test_components_follow_references_both_ways() -> None:
    deps = {"a": (), "b": ("a",), "c": (), "d": ("c", "b"), "e": ()}
    assert sorted(components(deps)) == [["a", "b", "c", "d"], ["e"]]


@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=3),
        st.floats(min_value=0.001, max_value=1.0),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=1, max_value=6),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_shards_cover_every_asset_once_and_keep_groups_whole(
    weights: dict[str, float], count: int, rnd: random.Random
) -> None:
    names = list(weights)
    # Each asset may reference earlier ones: any acyclic graph.
    deps = {n: tuple(m for m in names[:i] if rnd.random() < 0.1) for i, n in enumerate(names)}
    shards = split(weights, deps, count)
    assert len(shards) == count
    flat = [a for s in shards for a in s]
    assert sorted(flat) == sorted(names)
    where = {a: i for i, s in enumerate(shards) for a in s}
    assert all(where[n] == where[d] for n, ds in deps.items() for d in ds)
    # LPT: no shard exceeds the lightest by more than the heaviest component.
    loads = [sum(weights[a] for a in s) for s in shards]
    heaviest = max(sum(weights[a] for a in g) for g in components(deps))
    assert max(loads) - min(loads) <= heaviest + 1e-9


def test_the_split_is_the_same_whatever_the_local_state(tmp_path: Path) -> None:
    weights = {f"a{i}": 0.03 for i in range(10)}
    deps: dict[str, tuple[str, ...]] = {a: () for a in weights}
    assert split(weights, deps, 3) == split(dict(weights), dict(deps), 3)


@pytest.mark.parametrize("bad", ["0/4", "5/4", "2", "a/b", "1/0", "-1/2"])
def test_a_bad_shard_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(bad)


def test_four_shards_then_a_frozen_fan_in_make_one_lock_with_no_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: S3Server
) -> None:
    lines = ["version: 1", "defaults: {width: 64, height: 64}", "assets:"]
    for i in range(24):
        refs = f", references: [g{i - 1:02d}]" if i % 3 else ""
        lines.append(f'  g{i:02d}: {{prompt: "picture {i}", seed: {i}{refs}}}')
    text = "\n".join(lines) + "\n"
    monkeypatch.setenv("FLEXFORGE_REMOTE", f"s3://{s3_env.new_bucket()}/ci")
    with serve_builds(monkeypatch, latency=0.05) as emu:
        built: set[str] = set()
        for i in range(1, 5):
            runner = Project(tmp_path / f"runner-{i}")
            runner.manifest(text)
            result = runner.run("build", "--provider", "emulator", "--shard", f"{i}/4")
            assert result.exit_code == 0, result.stderr
            mine = set(runner.lock()["assets"])
            assert not mine & built
            built |= mine
        assert len(built) == 24
        assert emu.stats()["submissions"] == 24
        fan_in = Project(tmp_path / "fan-in")
        fan_in.manifest(text)
        result = fan_in.run("build", "--provider", "emulator", "--frozen")
        assert result.exit_code == 0, result.stderr
        assert "24 restored" in result.stderr
        assert emu.stats()["submissions"] == 24  # no API call at the fan-in
        assert set(fan_in.lock()["assets"]) == built
