"""Splitting a build across N runners: whole connected components of the dependency graph, balanced by cost.

Every runner computes the same split from the manifest alone (never from local state, which differs
between machines), so the N shards together cover each asset exactly once, and no asset waits on
an upstream another runner makes.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping

from flexforge.errors import UsageError
from flexforge.manifest import Manifest

_SHARD = re.compile(r"(\d+)/(\d+)")


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1-based) -> (I, N); a clear usage error otherwise."""
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--shard {text!r}: give I/N, such as 2/4 (the second of four runners)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count <= 1000:
        raise UsageError(f"--shard {text}: I must be between 1 and N, and N at most 1000")
    return index, count


def components(deps: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Groups of assets linked by references (in either direction), each in manifest order."""
    parent = {node: node for node in deps}

    def find(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node, needs in deps.items():
        for need in needs:
            a, b = find(node), find(need)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for node in deps:
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


def split(weights: Mapping[str, float], deps: Mapping[str, tuple[str, ...]], count: int) -> list[list[str]]:
    """`count` shards of whole components, the heaviest component first onto the lightest shard
    (LPT); ties broken by name, so every machine gets the same answer."""
    groups = components(deps)
    groups.sort(key=lambda g: (-sum(weights[a] for a in g), g[0]))
    shards: list[list[str]] = [[] for _ in range(count)]
    loads = [(0.0, i) for i in range(count)]
    for group in groups:
        load, i = heapq.heappop(loads)
        shards[i].extend(group)
        heapq.heappush(loads, (load + sum(weights[a] for a in group), i))
    return shards


def asset_weights(manifest: Manifest) -> dict[str, float]:
    """What each asset would cost to generate, from the pricing table alone; assets that cost
    nothing (drafts, unknown models) weigh a little, so they still spread."""
    from flexforge.pricing import estimate_usd

    weights = {}
    for asset in manifest.assets.values():
        sizes = [
            (manifest.assets[r].width, manifest.assets[r].height)
            for r in asset.references
            if r in manifest.assets
        ]
        weights[asset.id] = max(estimate_usd(asset.model, asset.width, asset.height, sizes), 0.001)
    return weights


def shard_targets(manifest: Manifest, index: int, count: int) -> frozenset[str]:
    deps = {a.id: a.asset_refs for a in manifest.assets.values()}
    return frozenset(split(asset_weights(manifest), deps, count)[index - 1])
