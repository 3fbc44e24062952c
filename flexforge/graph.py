"""The dependency graph of assets: order, cycles, and drawings of it."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping


class CycleError(ValueError):
    def __init__(self, cycle: list[str]) -> None:
        super().__init__(" -> ".join(cycle))
        self.cycle = cycle


def topological_order(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Dependencies first; ties keep declaration order so output is stable. Kahn's algorithm on
    a heap: importing networkx alone would cost a cold plan more than sorting 10,000 assets."""
    position = {node: i for i, node in enumerate(deps)}
    waiting = {node: len(set(needs)) for node, needs in deps.items()}
    users: dict[str, list[str]] = {node: [] for node in deps}
    for node, needs in deps.items():
        for need in set(needs):
            users[need].append(node)
    ready = [position[node] for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    names = list(deps)
    while ready:
        node = names[heapq.heappop(ready)]
        order.append(node)
        for user in users[node]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, position[user])
    if len(order) < len(deps):
        raise CycleError(_find_cycle(deps))
    return order


def _find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str]:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(deps)
    for node, needs in deps.items():
        graph.add_edges_from((need, node) for need in needs)
    edges = nx.find_cycle(graph)
    # find_cycle gives (upstream, downstream) edges; print it the way references read.
    return [edges[0][1], edges[0][0], *(u for u, _ in reversed(edges[1:]))]


def render(deps: Mapping[str, Iterable[str]], fmt: str, groups: Mapping[str, str] | None = None) -> str:
    """The graph as Mermaid, Graphviz dot, or JSON; edges point from an input to its user.
    `groups` (node -> the matrix that declared it) clusters a matrix's cells together."""
    groups = groups or {}
    edges = [(need, node) for node, needs in deps.items() for need in needs]
    if fmt == "json":
        doc: dict[str, object] = {"nodes": list(deps), "edges": [{"from": a, "to": b} for a, b in edges]}
        if groups:
            doc["matrices"] = {
                g: [n for n in deps if groups.get(n) == g] for g in dict.fromkeys(groups.values())
            }
        return json.dumps(doc, indent=2, allow_nan=False)
    if fmt == "dot":
        lines = ["digraph flexforge {", "  rankdir=LR;"]
        for i, group in enumerate(dict.fromkeys(groups.values())):
            lines.append(
                f'  subgraph cluster_{i} {{ label="{group}"; '
                + " ".join(f'"{n}";' for n in deps if groups.get(n) == group)
                + " }"
            )
        lines += [f'  "{node}";' for node in deps]
        lines += [f'  "{a}" -> "{b}";' for a, b in edges]
        return "\n".join([*lines, "}"])
    lines = ["graph LR"]
    ids = {node: f"n{i}" for i, node in enumerate(deps)}
    lines += [f'  {ids[node]}["{node}"]' for node in deps if node not in groups]
    for i, group in enumerate(dict.fromkeys(groups.values())):
        lines.append(f'  subgraph m{i}["{group}"]')
        lines += [f'    {ids[node]}["{node}"]' for node in deps if groups.get(node) == group]
        lines.append("  end")
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in edges]
    return "\n".join(lines)
