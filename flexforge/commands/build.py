"""`flexforge build`: make the files on disk match the manifest, generating only what changed."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import click

from flexforge.commands.plan import compute_plan, print_plan
from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, FlexforgeError
from flexforge.options import BuildOptions, PlanOptions
from flexforge.planner import DRIFTED, GENERATES, Plan

if TYPE_CHECKING:
    from flexforge.engine import Builder, BuildResult
    from flexforge.providers import Provider

LOCK_TIMEOUT_ENV = "FLEXFORGE_LOCK_TIMEOUT"


def build(
    opts: GlobalOptions,
    plan_options: PlanOptions,
    provider: str | None,
    options: BuildOptions,
    *,
    dry_run: bool,
    frozen: bool,
) -> int:
    project = open_project(opts)
    if dry_run:
        print_plan(compute_plan(project, plan_options, provider), opts)
        return EXIT_OK
    wait = float(os.environ.get(LOCK_TIMEOUT_ENV, "300"))

    def waiting() -> None:
        click.echo(
            f"waiting for another flexforge build in this repo to finish (up to {wait:.0f} s)...", err=True
        )

    with project.store.build_lock(wait=wait, on_wait=waiting):
        # The lock is first read here, under the build lock: another build may just have written it.
        plan = compute_plan(project, plan_options, provider)
        if frozen:
            _check_frozen(plan)
        if not plan.has_changes:
            if not opts.quiet:
                click.echo(f"Up to date: {len(plan.steps)} assets.")
            return EXIT_OK
        return _execute(project, plan, plan_options, options, opts)


def _check_frozen(plan: Plan) -> None:
    stale = [s for s in plan.steps if s.action in GENERATES or s.action == DRIFTED]
    if stale:
        listed = ", ".join(
            f"{s.asset.id} ({s.action}{': ' + ', '.join(s.reasons) if s.reasons else ''})" for s in stale
        )
        raise FlexforgeError(
            f"--frozen: {len(stale)} asset{'s' if len(stale) != 1 else ''} would be generated or "
            f"differ from the lock: {listed}. Run `flexforge build` and commit the result."
        )


def _execute(
    project: Project, plan: Plan, plan_options: PlanOptions, options: BuildOptions, opts: GlobalOptions
) -> int:
    # Imported here: a no-op build needs no event loop, engine or provider.
    import asyncio

    from flexforge.engine import Builder, NothingToGenerate
    from flexforge.progress import make_reporter
    from flexforge.providers import load_provider

    needs_provider = any(s.action in GENERATES for s in plan.steps)
    provider = load_provider(plan.provider) if needs_provider else NothingToGenerate(plan.provider)
    reporter = make_reporter(verbose=opts.verbose, quiet=opts.quiet, color=opts.color)
    builder = Builder(plan, project.lock, project.store, provider, reporter, plan_options, options)
    started = time.monotonic()
    reporter.begin(len(plan.steps), sum(1 for s in plan.steps if s.action in GENERATES))
    interrupted = False
    try:
        result = asyncio.run(
            _run(builder, provider, _credits_needed(plan, options) if needs_provider else 0.0)
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        result = builder.result
    finally:
        reporter.end()
    _summarise(result, time.monotonic() - started, plan, opts, interrupted)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if result.failures else EXIT_OK


def _credits_needed(plan: Plan, options: BuildOptions) -> float:
    """What the balance must cover before anything is paid: the plan's estimate, at most
    --max-cost; nothing when the check is off or the provider is free."""
    if not options.check_credits or plan.generator == "draft":
        return 0.0
    needed = plan.estimated_cost_usd
    return needed if options.max_cost_usd is None else min(needed, options.max_cost_usd)


async def _run(builder: Builder, provider: Provider, credits_needed: float) -> BuildResult:
    import asyncio
    import contextlib
    import signal

    main = asyncio.current_task()
    if main is not None:
        # A cancelled CI job sends SIGTERM: stop like Ctrl-C, keeping finished work.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        if credits_needed > 0:
            from flexforge import credits

            checked = await credits.check(provider, provider.name, credits_needed)
            if checked.balance_credits is None:
                builder.reporter.log(checked.line())
            credits.refuse_when_short(checked)
        return await builder.run()
    finally:
        await provider.aclose()


def _summarise(
    result: BuildResult, seconds: float, plan: Plan, opts: GlobalOptions, interrupted: bool
) -> None:
    from flexforge.engine import FAILED, GENERATED, RESTORED, SKIPPED, UP_TO_DATE

    counts = [
        f"{result.count(GENERATED)} generated",
        f"{result.count(RESTORED)} restored",
        f"{result.count(UP_TO_DATE)} up to date",
    ]
    for kind in (DRIFTED, FAILED, SKIPPED):
        if result.count(kind):
            counts.append(f"{result.count(kind)} {kind}")
    if plan.orphaned:
        counts.append(f"{len(plan.orphaned)} orphaned dropped from the lock")
    money = ""
    if plan.generator != "draft":
        money = f"; estimated ${result.estimated_cost_usd:.2f}, actual ${result.actual_cost_usd:.2f}"
    if interrupted:
        click.echo(
            "interrupted: every finished asset is kept and in-flight tasks are journaled; "
            "run `flexforge build` again to resume without paying twice",
            err=True,
        )
    if not opts.quiet or result.failures:
        click.echo(f"Build: {', '.join(counts)} in {seconds:.1f}s{money}.", err=True)
    if result.maybe_charged:
        n = len(result.maybe_charged)
        click.echo(
            f"{n} submission{'s' if n != 1 else ''} may have been charged with no answer "
            f"(worst case ${result.maybe_charged_usd:.2f}): "
            f"{', '.join(sorted({a for a, _ in result.maybe_charged}))}; check the account",
            err=True,
        )
    for outcome in result.failures:
        click.echo(f"  {outcome.result}: {outcome.asset_id}: {outcome.detail}", err=True)
