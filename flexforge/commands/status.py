"""`flexforge status`: the lock's view of each asset, and what was spent."""

from __future__ import annotations

import json
from typing import Any

import click

from flexforge.commands.plan import compute_plan
from flexforge.context import GlobalOptions, open_project
from flexforge.errors import EXIT_OK
from flexforge.options import PlanOptions
from flexforge.planner import BLOCKED, NONE
from flexforge.text import plural


def status(
    opts: GlobalOptions, provider: str | None, *, as_json: bool, options: PlanOptions | None = None
) -> int:
    project = open_project(opts)
    plan = compute_plan(project, options or PlanOptions(), provider)
    rows: list[dict[str, Any]] = []
    for step in plan.steps:
        entry = project.lock.entries.get(step.asset.id)
        rows.append(
            {
                "id": step.asset.id,
                "out": step.asset.out,
                "sha256": entry.sha256 if entry else None,
                "seed": entry.seed if entry else step.asset.seed,
                "model": step.asset.model,
                "provider": entry.provider if entry else None,
                "cost_usd": entry.cost_usd if entry else None,
                "up_to_date": step.action == NONE,
                "action": step.action,
                "reasons": step.reasons,
            }
        )
    total = round(sum(r["cost_usd"] or 0.0 for r in rows), 6)
    # Everything billed, rerolls and replaced images included: the lock only holds the survivors.
    spent = round(sum(e.cost_usd for e in project.store.ledger()), 6)
    if as_json:
        doc = {
            "version": 1,
            "assets": rows,
            "orphaned": plan.orphaned,
            "total_cost_usd": total,
            "spent_usd": spent,
        }
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
        return EXIT_OK
    width = max([len("ID"), *(len(r["id"]) for r in rows), *(len(o) for o in plan.orphaned)])
    click.echo(f"  {'ID':<{width}}  {'STATE':<10}  {'SEED':>10}  {'COST':>8}  {'PROVIDER':<9} OUT")
    for r in rows:
        state = "ok" if r["up_to_date"] else r["action"]
        seed = "-" if r["seed"] is None else str(r["seed"])
        cost = "-" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"
        why = f"  ({'; '.join(r['reasons'])})" if r["action"] == BLOCKED else ""
        provider = r["provider"] or "-"
        click.echo(f"  {r['id']:<{width}}  {state:<10}  {seed:>10}  {cost:>8}  {provider:<9} {r['out']}{why}")
    for orphan in plan.orphaned:
        click.echo(f"  {orphan:<{width}}  orphaned")
    fresh = sum(1 for r in rows if r["up_to_date"])
    click.echo(
        f"{fresh}/{plural(len(rows), 'asset')} up to date; the lock's images cost ${total:.2f}; "
        f"${spent:.2f} spent in total by builds on this machine (`flexforge cost`)."
    )
    return EXIT_OK
