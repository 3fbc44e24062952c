"""`flexforge plan`: what a build would do and why, with the estimated cost."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from flexforge.context import GlobalOptions, Project, choose_provider, open_project
from flexforge.errors import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from flexforge.options import PlanOptions
from flexforge.planner import (
    BLOCKED,
    CONFLICT,
    CREATE,
    DRIFTED,
    NONE,
    REGENERATE,
    RENAME,
    RESTORE,
    Plan,
    make_plan,
)
from flexforge.settings import PROVIDER_ENV
from flexforge.text import plural

if TYPE_CHECKING:  # the balance check imports the pricing tables: only `--check-credits` needs them
    from flexforge.credits import CreditCheck

MARKS = {
    CREATE: "+",
    REGENERATE: "~",
    RESTORE: "<",
    RENAME: ">",
    DRIFTED: "!",
    CONFLICT: "!",
    NONE: "=",
    BLOCKED: "x",
}


def compute_plan(project: Project, options: PlanOptions, provider: str | None) -> Plan:
    name, generator = choose_provider(provider, project.manifest.settings)
    plan = make_plan(
        project.manifest, project.lock, project.store, name, generator, options, project.sources()
    )
    project.store.save()  # keep the digests we just computed, so the next plan hashes nothing
    if options == PlanOptions() and not plan.has_changes:
        _remember_noop(project, plan, by_default=provider is None and PROVIDER_ENV not in os.environ)
    return plan


def _remember_noop(project: Project, plan: Plan, *, by_default: bool) -> None:
    from flexforge import noop
    from flexforge.manifest import sibling_manifests

    try:
        project.store.ensure()  # refuses a state folder that is a link before writing into it
    except OSError:
        return  # a read-only checkout: plan works all the same, the next one is only slower
    files: dict[str, None] = {}
    for step in plan.steps:
        if step.asset.written:  # a candidate kept in the cache has no file to watch
            files[step.asset.out] = None
        files.update((ref, None) for ref in step.asset.references if ref not in step.asset.asset_refs)
    # A manifest added beside this one (its folder's stamp) or edited there may write one of
    # these outputs: a validation error the memo must not answer over.
    files["."] = None
    root = project.manifest.root
    files.update((s.relative_to(root).as_posix(), None) for s in sibling_manifests(project.manifest.path))
    always = matrix_lines(plan)  # print_plan shows these under -q too
    basis = _price_basis(plan)
    noop.record(
        str(project.manifest.path),
        plan.provider,
        len(plan.steps),
        list(files),
        [*always, summary_line(plan), *([f"Estimated with {basis}."] if basis else [])],
        by_default=by_default,
        read_stamps=project.read_stamps,
        quiet_lines=len(always),
        observed=project.store.observed,
    )


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "version": 1,
        "provider": plan.provider,
        "assets": [
            {
                "id": s.asset.id,
                "action": s.action,
                "reasons": s.reasons,
                "source": s.source.label if s.source is not None else None,
                "out": s.asset.out,
                "model": s.asset.model,
                "estimated_cost_usd": s.estimated_cost_usd,
                "matrix": s.asset.origin,
                "rendition": s.asset.rendition is not None,
                "tags": list(s.asset.tags),
            }
            for s in plan.steps
        ],
        "orphaned": plan.orphaned,
        "estimated_cost_usd": plan.estimated_cost_usd,
    }


def summary_line(plan: Plan) -> str:
    parts = [
        f"{plan.count(CREATE)} to create",
        f"{plan.count(REGENERATE)} to regenerate",
        f"{plan.count(RESTORE)} to restore",
    ]
    for action, label in (
        (RENAME, "renamed"),
        (DRIFTED, "drifted"),
        (CONFLICT, "in conflict"),
        (BLOCKED, "blocked"),
    ):
        if plan.count(action):
            parts.append(f"{plan.count(action)} {label}")
    parts.append(f"{plan.count(NONE)} up to date")
    if plan.orphaned:
        parts.append(f"{len(plan.orphaned)} orphaned")
    cost = (
        f"estimated cost ${plan.estimated_cost_usd:.2f}" if plan.generator != "draft" else "no cost (draft)"
    )
    return f"Plan: {', '.join(parts)}; {cost}."


def print_plan(plan: Plan, opts: GlobalOptions) -> None:
    shown = [s for s in plan.steps if s.action != NONE or opts.verbose]
    width = max((len(s.asset.id) for s in shown), default=0)
    actions = [s.action + (f" ({s.detail})" if s.detail else "") for s in shown]
    action_width = max((len(a) for a in actions), default=0)
    for step, action in zip(shown, actions, strict=True):
        cost = f"  ~${step.estimated_cost_usd:.4f}" if step.estimated_cost_usd else ""
        if step.asset.rendition is not None and step.action != NONE:
            cost = "  free (rendition)"
        padded = f"{action:<{action_width}}"
        if opts.color:
            padded = click.style(padded, fg=_colour(step.action))
        click.echo(f"  {MARKS[step.action]} {step.asset.id:<{width}}  {padded}  {step.asset.out}{cost}")
    for line in matrix_lines(plan):
        click.echo(line)
    for orphan in plan.orphaned:
        click.echo(f"  - {orphan:<{width}}  orphaned (in the lock, not in the manifest; its file is kept)")
    if not opts.quiet:
        click.echo(summary_line(plan))
        basis = _price_basis(plan)
        if basis:
            click.echo(f"Estimated with {basis}.")


def _price_basis(plan: Plan) -> str:
    """How the estimates were made, when the provider does not bill by BFL's table."""
    paid = sorted({s.asset.model for s in plan.steps if s.estimated_cost_usd})
    if not paid:
        return ""  # nothing to pay: the pricing tables need not even be read
    from flexforge.pricing import PER_REQUEST_PROVIDERS, price_basis

    if plan.provider not in PER_REQUEST_PROVIDERS:
        return ""
    return "; ".join(f"{model}: {price_basis(model, plan.provider)}" for model in paid)


def matrix_lines(plan: Plan) -> list[str]:
    """Which declaration made how many of the planned assets: the expansion, visible."""
    made: dict[str, list[int]] = {}
    for step in plan.steps:
        if step.asset.origin:
            made.setdefault(step.asset.origin.split(" ")[0], [step.asset.line, 0])[1] += 1
    return [
        f"  matrix {template} (line {line}) -> {plural(count, 'asset')}"
        for template, (line, count) in made.items()
    ]


def _colour(action: str) -> str:
    colours = {CREATE: "green", REGENERATE: "yellow", RESTORE: "cyan", RENAME: "cyan"}
    return {**colours, DRIFTED: "red", CONFLICT: "red", BLOCKED: "red"}.get(action, "white")


def plan(
    opts: GlobalOptions,
    options: PlanOptions,
    provider: str | None,
    *,
    as_json: bool,
    detailed_exitcode: bool,
    check_credits: bool = False,
) -> int:
    project = open_project(opts)
    result = compute_plan(project, options, provider)
    balance = _check_credits(result) if check_credits else None
    if as_json:
        doc = plan_json(result)
        if balance is not None:
            doc["credits"] = balance.json()
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print_plan(result, opts)
        if check_credits:
            click.echo(balance.line() if balance is not None else "Credits: none needed (draft).")
    if result.count(BLOCKED):
        return EXIT_ERROR  # an output path flexforge cannot use: the reason is on its line
    if detailed_exitcode and result.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def _check_credits(plan: Plan) -> CreditCheck | None:
    """The provider's balance against the plan's estimate: plan's one network call, on request."""
    if plan.generator == "draft":
        return None
    import asyncio

    from flexforge import credits
    from flexforge.providers import load_provider

    provider = load_provider(plan.provider)

    async def ask() -> CreditCheck:
        try:
            return await credits.check(provider, plan.provider, plan.estimated_cost_usd)
        finally:
            await provider.aclose()

    return asyncio.run(ask())
