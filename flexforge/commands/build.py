"""`flexforge build`: make the files on disk match the manifest, generating only what changed."""

from __future__ import annotations

import contextlib
import errno
import signal
import time
from typing import TYPE_CHECKING

import click

from flexforge import gitblobs, knobs
from flexforge.commands.plan import compute_plan, print_plan
from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_ERROR, EXIT_OK, FlexforgeError
from flexforge.options import BuildFlags, BuildOptions, PlanOptions
from flexforge.planner import CONFLICT, DRIFTED, GENERATES, HELD, LFS_REASON, Plan, Step
from flexforge.text import plural

if TYPE_CHECKING:
    from flexforge.engine import Builder, BuildResult
    from flexforge.leases import Team
    from flexforge.progress import Reporter
    from flexforge.providers import Provider
    from flexforge.signals import StopSignals

LOCK_TIMEOUT_ENV = "FLEXFORGE_LOCK_TIMEOUT"
WORKER_THREADS_MAX = 32


def build(
    opts: GlobalOptions,
    plan_options: PlanOptions,
    provider: str | None,
    flags: BuildFlags,
    *,
    dry_run: bool,
    frozen: bool,
    shard: str | None = None,
) -> int:
    project = open_project(opts)
    if shard is not None:
        plan_options = _shard_options(project, plan_options, shard, opts)
        if not plan_options.targets:
            return EXIT_OK
    if dry_run:
        print_plan(compute_plan(project, plan_options, provider), opts)
        return EXIT_OK
    wait = knobs.seconds(LOCK_TIMEOUT_ENV, 300.0)

    def waiting() -> None:
        click.echo(
            f"waiting for another flexforge build in this repo to finish (up to {wait:.0f} s)...", err=True
        )

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(project.store.build_lock(wait=wait, on_wait=waiting))
            read_only: OSError | None = None
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                raise
            # A read-only checkout: no build can write here, so none can race this one; a build
            # with nothing to write (what --frozen checks) goes on without the lock.
            read_only = exc
        # The lock is first read here, under the build lock: another build may just have written it.
        plan = compute_plan(project, plan_options, provider)
        options = flags.resolve(project.manifest.settings)
        if frozen:
            _check_frozen(plan)
        _check_budget(plan, options)
        # Not under --frozen, which checks a checkout and writes nothing.
        filled = (
            0
            if frozen or read_only is not None
            else gitblobs.backfill(project.lock, plan.steps, project.manifest.root)
        )
        if not plan.has_changes:
            if filled:
                project.lock.save()
            if not opts.quiet:
                click.echo(f"Up to date: {plural(len(plan.steps), 'asset')}.")
            return EXIT_OK
        if read_only is not None:
            raise FlexforgeError(
                f"cannot write in {project.store.dir.name} ({read_only.strerror}): this checkout is "
                "read-only, and the build has work to do; `flexforge plan` shows it, and "
                "`flexforge build --frozen` checks a checkout without writing"
            )
        return _execute(project, plan, plan_options, options, opts, frozen=frozen)


def _shard_options(project: Project, options: PlanOptions, shard: str, opts: GlobalOptions) -> PlanOptions:
    """The build's targets for `--shard I/N`: the I-th part of the dependency graph."""
    import dataclasses

    from flexforge.errors import UsageError
    from flexforge.shards import parse_shard, shard_targets

    index, count = parse_shard(shard)
    if options.targets:
        raise UsageError("--shard picks the assets itself; give either asset ids or --shard, not both")
    targets = shard_targets(project.manifest, index, count)
    if not opts.quiet:
        total = len(project.manifest.assets)
        click.echo(f"Shard {index}/{count}: {len(targets)} of {total} assets.", err=True)
    return dataclasses.replace(options, targets=targets)


# What a read-only checkout (a read-only mount, files the user may not write) answers a write with.
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _check_budget(plan: Plan, options: BuildOptions) -> None:
    """`refuse`: all or nothing, for whoever owns the budget; a journaled task costs nothing."""
    over = [
        f"{s.asset.id} (${s.estimated_cost_usd:.4f} > ${s.asset.max_cost_usd:.4f})"
        for s in plan.steps
        if s.asset.max_cost_usd is not None and s.estimated_cost_usd > s.asset.max_cost_usd + 1e-9
    ]
    if over:
        raise FlexforgeError(
            f"over its own budget (max_cost_usd in the manifest): {', '.join(over)}; nothing was started. "
            "Choose a smaller size or a cheaper model, or raise the asset's budget"
        )
    limit = options.max_cost_usd
    if limit is not None and options.max_cost_policy == "refuse" and plan.estimated_cost_usd > limit + 1e-9:
        raise FlexforgeError(
            f"the plan's estimate ${plan.estimated_cost_usd:.2f} is over the limit ${limit:.2f} "
            "(max_cost_policy refuse); nothing was started. Build fewer assets (flexforge build ID...) "
            "or raise --max-cost"
        )


def _check_frozen(plan: Plan) -> None:
    stale = [s for s in plan.steps if s.action in GENERATES or s.action in HELD]
    if stale:
        listed = ", ".join(f"{s.asset.id} ({s.action}{': ' + s.detail if s.detail else ''})" for s in stale)
        raise FlexforgeError(
            f"--frozen: {plural(len(stale), 'asset')} would be generated or differ from the lock: "
            f"{listed}. {_frozen_hint(stale)}"
        )


def _frozen_hint(stale: list[Step]) -> str:
    """The fix that fits what was found, most specific first."""
    if any(LFS_REASON in s.reasons for s in stale):
        return "Images are Git LFS pointers in this clone: run `git lfs pull`, then build again."
    held = [s.asset.id for s in stale if s.action in HELD]
    if held:
        return (
            f"Keep the files with `flexforge accept {held[0]}`, or overwrite them with "
            f"`flexforge build --replace {held[0]}`; then commit."
        )
    deleted = [s.asset.out for s in stale if s.reasons == ["missing"]]
    if len(deleted) == len(stale):
        # A deleted output that any commit, cache or remote holds was restored above, free.
        return (
            f"No commit, cache or remote holds {' '.join(deleted)}: run `flexforge build` to make "
            "it again, and commit it."
        )
    return "Run `flexforge build` and commit the result."


def _execute(
    project: Project,
    plan: Plan,
    plan_options: PlanOptions,
    options: BuildOptions,
    opts: GlobalOptions,
    *,
    frozen: bool = False,
) -> int:
    # Imported here: a no-op build needs no event loop, engine or provider.
    import asyncio
    import functools

    from flexforge.engine import Builder, NothingToGenerate
    from flexforge.progress import make_reporter
    from flexforge.providers import load_provider
    from flexforge.signals import StopSignals, exit_code

    needs_provider = any(s.action in GENERATES for s in plan.steps)
    if needs_provider:
        provider: Provider = load_provider(plan.provider)
    else:
        # A restore source found damaged still needs its image; --frozen never pays for it.
        load = None if frozen else functools.partial(load_provider, plan.provider)
        provider = NothingToGenerate(plan.provider, load)
    if needs_provider and plan.generator != "draft":
        project.store.check_journal_writable()
    reporter = make_reporter(verbose=opts.verbose, quiet=opts.quiet, color=opts.color)
    team = _team(project, reporter, needs_provider)
    builder = Builder(plan, project.lock, project.store, provider, reporter, plan_options, options, team)
    started = time.monotonic()
    reporter.begin(len(plan.steps), sum(1 for s in plan.steps if s.action in GENERATES))
    with StopSignals() as stop:
        stop.notify = lambda signum, first: _stopping(builder, signum, first)
        try:
            needed = _credits_needed(plan, options) if needs_provider else 0.0
            result = asyncio.run(_run(builder, provider, stop, needed))
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            stop.signum = stop.signum or getattr(exc, "signum", signal.SIGINT)
            result = builder.result
        finally:
            reporter.end()
        _summarise(result, time.monotonic() - started, plan, opts, stop.signum, builder)
    if stop.signum is not None:
        return exit_code(stop.signum)
    return EXIT_ERROR if result.failures else EXIT_OK


def _credits_needed(plan: Plan, options: BuildOptions) -> float:
    """What the balance must cover before anything is paid: the plan's estimate, at most
    --max-cost; nothing when the check is off or the provider is free."""
    if not options.check_credits or plan.generator == "draft":
        return 0.0
    needed = plan.estimated_cost_usd
    return needed if options.max_cost_usd is None else min(needed, options.max_cost_usd)


def _team(project: Project, reporter: Reporter, paying: bool) -> Team | None:
    """The team remote this build shares images (and, when it pays, leases) through, if any."""
    from flexforge.leases import Team

    remote = project.remote
    if remote is None:
        return None
    team = Team(remote, reporter.log)
    if paying:
        team.start()
    return team


async def _run(builder: Builder, provider: Provider, stop: StopSignals, credits_needed: float) -> BuildResult:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    # Worker threads mostly wait (fsyncs, the team remote's round trips): with asyncio's default
    # of cores + 4, a few slow remote calls held up every other task's journal and image writes.
    workers = min(WORKER_THREADS_MAX, 8 + 2 * builder.options.jobs)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, "flexforge-io"))
    main = asyncio.current_task()
    if main is not None:
        stop.attach(main)
    try:
        if credits_needed > 0:
            from flexforge import credits

            checked = await credits.check(provider, provider.name, credits_needed)
            if checked.balance_credits is None:
                builder.reporter.log(checked.line())
            credits.refuse_when_short(checked)
        return await builder.run()
    finally:
        # Stopped, this waits (bounded) for submissions whose answers are on their way, so that
        # their tasks are journaled; further signals only say so (see flexforge.signals).
        await provider.aclose()
        stop.detach()


def _stopping(builder: Builder, signum: int, first: bool) -> None:
    """Say at once what a stop signal does, and what a repeated one cannot cut short."""
    from flexforge.signals import signal_name

    waiting = [r.asset for r in builder.records.values() if r.on_the_wire]
    name = signal_name(signum)
    head = f"stopping ({name}): no new submissions" if first else f"{name} again"
    if waiting:
        n = len(waiting)
        what = (
            f"waiting for the answer to {n} submission{'s' if n != 1 else ''} already sent "
            f"({_listed(waiting)}), so that each paid task is journaled, not paid twice "
            "(at most $FLEXFORGE_HTTP_TIMEOUT s); SIGKILL stops at once"
        )
    else:
        what = "saving the lock and what finished"
    click.echo(f"{head}; {what}", err=True)


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _summarise(
    result: BuildResult, seconds: float, plan: Plan, opts: GlobalOptions, signum: int | None, builder: Builder
) -> None:
    from flexforge.engine import FAILED, GENERATED, RESTORED, SKIPPED, UP_TO_DATE
    from flexforge.signals import signal_name

    counts = [
        f"{result.count(GENERATED)} generated",
        f"{result.count(RESTORED)} restored",
        f"{result.count(UP_TO_DATE)} up to date",
    ]
    for kind in (DRIFTED, CONFLICT, FAILED, SKIPPED):
        if result.count(kind):
            counts.append(f"{result.count(kind)} {kind}")
    # An entry a rename takes its seed from stays until the new id is in the lock (engine).
    dropped = [o for o in plan.orphaned if o not in builder.recorder.lock.entries]
    if dropped:
        counts.append(f"{plural(len(dropped), 'orphaned entry', 'orphaned entries')} dropped from the lock")
    money = ""
    if plan.generator != "draft":
        money = f"; estimated ${result.estimated_cost_usd:.2f}, actual ${result.actual_cost_usd:.2f}"
    if signum is not None:
        click.echo(f"interrupted ({signal_name(signum)}): {_in_flight(builder)}", err=True)
    else:
        for line in _unjournaled(builder):
            click.echo(line, err=True)
    if not opts.quiet or result.failures:
        click.echo(f"Build: {', '.join(counts)} in {seconds:.1f}s{money}.", err=True)
    if result.maybe_charged:
        click.echo(
            f"{plural(len(result.maybe_charged), 'submission')} may have been charged with no answer "
            f"(worst case ${result.maybe_charged_usd:.2f}): "
            f"{', '.join(sorted({a for a, _ in result.maybe_charged}))}; check the account",
            err=True,
        )
    for outcome in result.failures:
        click.echo(f"  {outcome.result}: {outcome.asset_id}: {outcome.detail}", err=True)


def _in_flight(builder: Builder) -> str:
    """What became of the tasks in flight, claiming "journaled" only for those that are."""
    unsettled = [r for r in builder.records.values() if not r.settled]
    journaled = [r for r in unsettled if r.task_id is not None and r.journaled]
    parts = ["every finished asset is kept"]
    if journaled:
        n = len(journaled)
        parts.append(
            f"{n} task{'s' if n != 1 else ''} in flight {'are' if n != 1 else 'is'} journaled "
            f"({_listed([r.asset for r in journaled])}); run `flexforge build` again to resume "
            "without paying twice"
        )
    elif not _unjournaled(builder):
        parts.append("nothing paid was in flight; run `flexforge build` again to do the rest")
    return "; ".join(parts) + "".join("\n" + line for line in _unjournaled(builder))


def _unjournaled(builder: Builder) -> list[str]:
    """One line for each paid task that is neither kept nor journaled: its id and where to fetch
    it, or, when its answer never came, that it may have been charged."""
    lines = []
    for r in builder.records.values():
        if r.settled:
            continue
        if r.task_id is not None and not r.journaled:
            lines.append(
                f"  not journaled: {r.asset}: task {r.task_id} is paid for, but the journal could not "
                f"be written ({r.journal_error}); its result is at {r.polling_url} — the next build "
                "cannot resume it and would pay again"
            )
        elif r.task_id is None and r.on_the_wire:
            lines.append(
                f"  not journaled: {r.asset}: its submission got no answer before the build stopped; "
                "the API may have created and charged a task that no build can resume"
            )
    return lines
