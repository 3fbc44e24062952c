"""`flexforge explain ID`: the resolved request and each part of its key, old vs new."""

from __future__ import annotations

import json

import click

from flexforge.commands.plan import compute_plan
from flexforge.context import GlobalOptions, open_project
from flexforge.errors import EXIT_OK
from flexforge.keys import PARTS, known_parts, request_params
from flexforge.lockfile import LockEntry
from flexforge.options import PlanOptions
from flexforge.planner import DRIFTED, HELD, Facts, Step
from flexforge.store import Store


def explain(opts: GlobalOptions, asset_id: str, provider: str | None) -> int:
    project = open_project(opts)
    project.manifest.require(asset_id)
    plan = compute_plan(project, PlanOptions(targets=frozenset([asset_id])), provider)
    step = next(s for s in plan.steps if s.asset.id == asset_id)
    asset = step.asset
    entry = project.lock.entries.get(asset_id)
    echo = click.echo
    echo(f"{asset_id}: {step.action}" + (f" ({step.detail})" if step.detail else ""))
    echo(f"  model     {asset.model} via {plan.provider} (generator: {plan.generator})")
    echo(f"  out       {asset.out}")
    if asset.origin:
        echo(f"  matrix    {asset.origin} ({project.manifest.label}:{asset.line})")
    if asset.tags:
        echo(f"  tags      {', '.join(asset.tags)}")
    if step.action in HELD:
        # The step carries the lock's digest (dependents are planned from it): read the file's.
        echo(f"  on disk   sha256 {plan.facts.store.digest(asset.out)}")
    if step.action == DRIFTED and entry is not None:
        echo(f"  lock      sha256 {entry.sha256}")
    echo(
        f"  seed      {step.seed if step.seed is not None else '-'} ({_seed_origin(step, entry, plan.facts)})"
    )
    echo("  params    " + json.dumps(request_params(asset), sort_keys=True, allow_nan=False))
    echo("  prompt    " + asset.prompt)
    used = _api_prompt(project.store, step.key.key if step.key else None, entry.key if entry else None)
    if used is not None and used != asset.prompt:
        echo("  used      " + used)
        echo("            (the prompt the API says it followed: rewritten by prompt upsampling)")
    digests = step.reference_digests or [None] * len(asset.references)
    for i, (ref, digest) in enumerate(zip(asset.references, digests, strict=True)):
        kind = "asset" if ref in asset.asset_refs else "file"
        missing = "to be built first" if kind == "asset" else "missing"
        echo(f"  image {i + 1}   {ref} ({kind}) sha256 {digest or missing}")
    echo("  key parts (lock -> now):")
    now = _parts_now(step, plan.generator)
    for part in PARTS:
        old = entry.parts.get(part, "-") if entry else "-"
        new = now.get(part, "?")
        # An unknown part (an upstream output still to be made) is marked only as unknown.
        mark = "  " if old == new else ("? " if new == "?" else "* ")
        echo(f"    {mark}{part:<10} {old} -> {new}")
    waits_on = "a seed is drawn" if step.seed is None else "its inputs are built"
    new_key = step.key.key if step.key else f"unknown until {waits_on}"
    echo(f"  key       {entry.key if entry else '-'} -> {new_key}")
    return EXIT_OK


def _seed_origin(step: Step, entry: LockEntry | None, facts: Facts) -> str:
    """Where the step's seed comes from, in the order the planner looks (resolve_seed, then a
    renamed id's orphaned entry, then a committed lock in git history)."""
    asset = step.asset
    if asset.seed is not None:
        return "manifest"
    if step.seed is None:
        return "drawn at build"
    if entry is not None and entry.seed == step.seed:
        return "pinned in the lock"
    if facts.pinned.get(asset.id) == step.seed:
        return "drawn by an earlier build that did not finish"
    old = next((old for old, new in facts.renamed.items() if new == asset.id), None)
    if old is not None:
        return f"kept from {old}, renamed"
    return "pinned by a committed lock (git history)"


def _api_prompt(store: Store, *keys: str | None) -> str | None:
    """The prompt the API reported for the current key's image, else for the lock's."""
    for key in keys:
        record = store.key_record(key) if key else None
        if record is not None and record.result_prompt is not None:
            return record.result_prompt
    return None


def _parts_now(step: Step, generator: str) -> dict[str, str]:
    """Every part that can be told now: all of them when the key is known, else those that do
    not wait on an upstream output or a seed still to be drawn."""
    if step.key is not None:
        return step.key.parts
    digests = step.reference_digests or [None] * len(step.asset.references)
    parts = known_parts(step.asset, generator, step.seed, digests)
    if step.seed is None:
        parts.pop("seed")
    if None in [d for r, d in zip(step.asset.references, digests, strict=True) if r in step.asset.asset_refs]:
        parts.pop("upstream")
    if None in [
        d for r, d in zip(step.asset.references, digests, strict=True) if r not in step.asset.asset_refs
    ]:
        parts.pop("references")
    return parts
