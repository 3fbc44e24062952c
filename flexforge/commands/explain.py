"""`flexforge explain ID`: the resolved request and each part of its key, old vs new."""

from __future__ import annotations

import json

import click

from flexforge.commands.plan import compute_plan
from flexforge.context import GlobalOptions, open_project
from flexforge.errors import EXIT_OK, UsageError
from flexforge.keys import PARTS, request_params
from flexforge.options import PlanOptions


def explain(opts: GlobalOptions, asset_id: str, provider: str | None) -> int:
    project = open_project(opts)
    if asset_id not in project.manifest.assets:
        raise UsageError(f"unknown asset id: {asset_id}")
    plan = compute_plan(project, PlanOptions(targets=frozenset([asset_id])), provider)
    step = next(s for s in plan.steps if s.asset.id == asset_id)
    asset = step.asset
    entry = project.lock.entries.get(asset_id)
    echo = click.echo
    echo(f"{asset_id}: {step.action}" + (f" ({', '.join(step.reasons)})" if step.reasons else ""))
    echo(f"  model     {asset.model} via {plan.provider} (generator: {plan.generator})")
    echo(f"  out       {asset.out}")
    seed_note = (
        "manifest"
        if asset.seed is not None
        else ("pinned in the lock" if step.seed is not None else "drawn at build")
    )
    echo(f"  seed      {step.seed if step.seed is not None else '-'} ({seed_note})")
    echo("  params    " + json.dumps(request_params(asset), sort_keys=True, allow_nan=False))
    echo("  prompt    " + asset.prompt)
    for i, ref in enumerate(asset.references):
        digest = step.reference_digests[i] if step.reference_digests else None
        kind = "asset" if ref in asset.asset_refs else "file"
        echo(f"  image {i + 1}   {ref} ({kind}) sha256 {digest or 'not yet built'}")
    echo("  key parts (lock -> now):")
    for part in PARTS:
        old = entry.parts.get(part, "-") if entry else "-"
        new = step.key.parts[part] if step.key else "?"
        mark = "  " if old == new else "* "
        echo(f"    {mark}{part:<10} {old} -> {new}")
    new_key = step.key.key if step.key else "unknown until its inputs are built"
    echo(f"  key       {entry.key if entry else '-'} -> {new_key}")
    return EXIT_OK
