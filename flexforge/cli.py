"""The command line: parse, build domain objects, dispatch to `flexforge.commands`, map errors."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from flexforge import __version__
from flexforge.context import GlobalOptions
from flexforge.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    FlexforgeError,
    ManifestError,
    UsageError,
    clip,
    printable,
)
from flexforge.providers import PROVIDERS
from flexforge.signals import Interrupted, exit_code

F = TypeVar("F", bound=Callable[..., Any])

MAX_SHOWN_ERRORS = 200
# OS errors that say what is wrong with the machine or the checkout in their own words.
_ENVIRONMENT = frozenset(
    {
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EISDIR,
        errno.ENOTDIR,
    }
)
PROVIDER_HELP = "Where images are made (default: $FLEXFORGE_PROVIDER, else bfl)."


def _merge_global(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Global options may come before or after the command name; the later one wins."""
    opts: GlobalOptions = ctx.ensure_object(GlobalOptions)
    if value is None or value is False or value == 0 or value == ():
        return value
    name = param.name or ""
    if name == "verbose":
        opts.verbose += int(value)
    elif name == "no_color":
        opts.color = False
    else:
        setattr(opts, name, value)
    return value


def global_options(func: F) -> F:
    options = [
        click.option(
            "-C",
            "directory",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            callback=_merge_global,
            expose_value=False,
            is_eager=True,
            help="Run as if started in DIR.",
        ),
        click.option(
            "-f",
            "--file",
            "file",
            default=None,
            callback=_merge_global,
            expose_value=False,
            is_eager=True,
            help="The manifest (default: flexforge.yaml).",
        ),
        click.option(
            "-v",
            "--verbose",
            "verbose",
            count=True,
            callback=_merge_global,
            expose_value=False,
            is_eager=True,
            help="Say more; -vv shows tracebacks.",
        ),
        click.option(
            "-q",
            "--quiet",
            "quiet",
            is_flag=True,
            callback=_merge_global,
            expose_value=False,
            is_eager=True,
            help="Say only what went wrong.",
        ),
        click.option(
            "--no-color",
            "no_color",
            is_flag=True,
            callback=_merge_global,
            expose_value=False,
            is_eager=True,
            help="No colours (also NO_COLOR=1).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def handle_errors(func: Callable[..., int]) -> Callable[..., None]:
    """Run a command and turn its result or error into the process exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        opts = click.get_current_context().ensure_object(GlobalOptions)
        try:
            code = func(*args, **kwargs)
        except ManifestError as exc:
            for diagnostic in exc.diagnostics[:MAX_SHOWN_ERRORS]:
                click.echo(str(diagnostic), err=True)
            n = len(exc.diagnostics)
            if n > MAX_SHOWN_ERRORS:
                click.echo(f"... and {n - MAX_SHOWN_ERRORS} more", err=True)
            click.echo(f"{n} error{'s' if n != 1 else ''} in the manifest", err=True)
            code = exc.exit_code
        except FlexforgeError as exc:
            click.echo(f"error: {exc}", err=True)
            code = exc.exit_code
        except KeyboardInterrupt as exc:  # Ctrl-C, or another stop signal (flexforge.signals)
            click.echo("interrupted", err=True)
            code = exit_code(exc.signum) if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
        except BrokenPipeError:
            code = _reader_went_away()
        except (click.exceptions.Exit, click.ClickException):
            raise
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT or opts.verbose >= 2:
                raise
            # The machine, not flexforge: a read-only checkout, a full disk, a path too long.
            where = f"{clip(str(exc.filename), 120)}: " if exc.filename else ""
            click.echo(printable(f"error: {where}{exc.strerror}"), err=True)
            code = EXIT_ERROR
        except Exception as exc:
            if opts.verbose >= 2:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)", err=True)
            code = EXIT_ERROR
        sys.exit(code)

    return wrapper


def _reader_went_away() -> int:
    """`flexforge status | head`: the reader has all it wanted. Quiet, and 141 (128 + SIGPIPE)
    as git and the shell's own tools exit; stdout goes to /dev/null so that the interpreter's
    final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def provider_option(func: F) -> F:
    return click.option("--provider", type=click.Choice(sorted(PROVIDERS)), default=None, help=PROVIDER_HELP)(
        func
    )


class _LazyGroup(click.Group):
    """Commands that bring heavy imports (the emulator's server) load only when invoked."""

    lazy: ClassVar[dict[str, str]] = {"emulator": "flexforge.commands.emulator:emulator_command"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, _, attr = self.lazy[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flexforge")
@global_options
def cli() -> None:
    """flexforge: infrastructure-as-code for images made with FLUX.2.

    Declare images in flexforge.yaml; `flexforge build` makes only what changed and records it
    in flexforge.lock.
    """
    if os.environ.get("NO_COLOR"):
        click.get_current_context().ensure_object(GlobalOptions).color = False
    # Folders every command may use: a bad one is said once, up front, not once per record.
    from flexforge import knobs
    from flexforge.paths import CACHE_DIR_ENV, DATA_DIR_ENV

    try:
        for name in (CACHE_DIR_ENV, DATA_DIR_ENV):
            knobs.folder(name)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


@cli.command()
@click.argument("target", metavar="[DIR]", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--workflows-only",
    is_flag=True,
    help="For an existing project: add the GitHub workflows and .flexforge/.gitignore only.",
)
@click.option(
    "--action",
    metavar="OWNER/REPO@SHA",
    default=None,
    help="The flexforge action the workflows pin (default: $FLEXFORGE_ACTION, or where pip got flexforge).",
)
@click.option("--force", is_flag=True, help="Rewrite workflows that are already there.")
@click.option(
    "--shards",
    type=click.IntRange(min=2, max=64),
    default=None,
    metavar="N",
    help="The build workflow runs N `build --shard` runners and a fan-in (needs a team remote).",
)
@global_options
@handle_errors
def init(
    target: Path | None, workflows_only: bool, action: str | None, force: bool, shards: int | None
) -> int:
    """Write a starter manifest, .flexforge/.gitignore and the GitHub workflows (at the git root)."""
    from flexforge.commands.init import init as run

    opts = click.get_current_context().find_object(GlobalOptions)
    assert opts is not None
    return run(
        opts.cwd() / target if target else opts.cwd(),
        opts,
        workflows_only=workflows_only,
        action=action,
        force=force,
        shards=shards or 0,
    )


@cli.command()
@click.option(
    "--draft",
    type=click.Choice(["2020-12", "07"]),
    default="2020-12",
    show_default=True,
    help="07: the draft-07 copy editors (yaml-language-server) and SchemaStore use.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE instead of printing.",
)
@handle_errors
def schema(draft: str, output: Path | None) -> int:
    """Print the manifest's JSON Schema."""
    from flexforge.commands.schema import schema as run

    return run(draft, output)


@cli.command()
@global_options
@handle_errors
def validate() -> int:
    """Check the manifest: schema and meaning. Exit 0 when valid, 1 otherwise."""
    from flexforge.commands.validate import validate as run

    return run(_opts())


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 nothing to do, 2 changes pending, 1 error.")
@provider_option
@click.option("--replace", multiple=True, metavar="ID", help="Plan ID as regenerated even if clean.")
@click.option("--reseed", multiple=True, metavar="ID", help="Plan ID with a new seed.")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="Select assets tagged TAG (and what they need)."
)
@click.option(
    "--check-credits", is_flag=True, help="Ask the provider for the balance (the only network call)."
)
@global_options
@handle_errors
def plan(
    ids: tuple[str, ...],
    as_json: bool,
    detailed_exitcode: bool,
    provider: str | None,
    replace: tuple[str, ...],
    reseed: tuple[str, ...],
    tags: tuple[str, ...],
    check_credits: bool,
) -> int:
    """What a build would do and why, with the estimated cost. No network unless --check-credits."""
    from flexforge.commands.plan import plan as run

    return run(
        _opts(),
        _plan_options(ids, replace, reseed, tags),
        provider,
        as_json=as_json,
        detailed_exitcode=detailed_exitcode,
        check_credits=check_credits,
    )


@cli.command()
@click.argument("ids", nargs=-1)
@provider_option
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks in flight at most (never above the provider's limit); default 8, or settings: jobs.",
)
@click.option("--dry-run", is_flag=True, help="Only show the plan.")
@click.option("--frozen", is_flag=True, help="Fail if anything would be generated (CI checks).")
@click.option("--replace", multiple=True, metavar="ID", help="Regenerate ID even if clean.")
@click.option("--reseed", multiple=True, metavar="ID", help="Draw a new seed for ID.")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="Select assets tagged TAG (and what they need)."
)
@click.option("--keep-going", is_flag=True, help="After a failure, build all that does not need it.")
@click.option(
    "--shard",
    metavar="I/N",
    default=None,
    help="Build only the I-th of N parts (whole dependency groups, balanced by cost), for N CI runners.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Never start a task that could take the run's estimated spend over USD.",
)
@click.option(
    "--max-cost-policy",
    type=click.Choice(["stop", "refuse"]),
    default=None,
    help="stop (default): start no task that could pass --max-cost; refuse: start nothing if the plan's "
    "estimate passes it.",
)
@click.option(
    "--ignore-credits",
    is_flag=True,
    help="Build even if the account's balance is below the plan's estimate.",
)
@global_options
@handle_errors
def build(
    ids: tuple[str, ...],
    provider: str | None,
    jobs: int | None,
    dry_run: bool,
    frozen: bool,
    replace: tuple[str, ...],
    reseed: tuple[str, ...],
    keep_going: bool,
    shard: str | None,
    max_cost: float | None,
    max_cost_policy: str | None,
    tags: tuple[str, ...],
    ignore_credits: bool,
) -> int:
    """Make the files match the manifest; IDs limit it to those assets and what they need."""
    from flexforge.commands.build import build as run
    from flexforge.options import BuildFlags

    options = BuildFlags(jobs, keep_going, max_cost, max_cost_policy, check_credits=not ignore_credits)
    return run(
        _opts(),
        _plan_options(ids, replace, reseed, tags),
        provider,
        options,
        dry_run=dry_run,
        frozen=frozen,
        shard=shard,
    )


@cli.command()
@click.argument("asset_id", metavar="ID")
@click.argument("candidate", type=int, required=False)
@click.option(
    "--more",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Add N candidates (paid), keep the rest.",
)
@provider_option
@global_options
@handle_errors
def pick(asset_id: str, candidate: int | None, more: int | None, provider: str | None) -> int:
    """Select candidate K of a `variants:` asset (free: from the cache, the working tree or git
    history); its dependents follow at the next build."""
    from flexforge.commands.pick import pick as run

    return run(_opts(), asset_id, candidate, more or 0, provider)


@cli.command()
@click.option(
    "--by", type=click.Choice(["run", "asset", "model", "month"]), default="month", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Every grouping as one JSON object on stdout.")
@global_options
@handle_errors
def cost(by: str, as_json: bool) -> int:
    """What this machine's builds paid (from the ledger), by run, asset, model or month."""
    from flexforge.commands.cost import cost as run

    return run(_opts(), by, as_json=as_json)


@cli.command()
@click.option("--yes", is_flag=True, help="Delete what is listed (default: only list it).")
@global_options
@handle_errors
def gc(yes: bool) -> int:
    """Orphaned outputs, cached objects nothing needs, finished journal entries."""
    from flexforge.commands.gc import gc as run

    return run(_opts(), yes=yes)


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@provider_option
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="Select assets tagged TAG (and what they need)."
)
@global_options
@handle_errors
def status(ids: tuple[str, ...], as_json: bool, provider: str | None, tags: tuple[str, ...]) -> int:
    """The lock's view: each asset, its output, seed, cost, and whether it is up to date."""
    from flexforge.commands.status import status as run

    return run(_opts(), provider, as_json=as_json, options=_plan_options(ids, (), (), tags))


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "json"]),
    default="mermaid",
    show_default=True,
)
@global_options
@handle_errors
def graph(fmt: str) -> int:
    """The dependency graph of the assets."""
    from flexforge.commands.graph import graph as run

    return run(_opts(), fmt)


@cli.command()
@click.argument("asset_id", metavar="ID")
@provider_option
@global_options
@handle_errors
def explain(asset_id: str, provider: str | None) -> int:
    """The resolved request of ID and each part of its key, old vs new."""
    from flexforge.commands.explain import explain as run

    return run(_opts(), asset_id, provider)


@cli.command()
@click.argument("asset_id", metavar="ID")
@global_options
@handle_errors
def accept(asset_id: str) -> int:
    """Adopt the hand-edited output of ID into the lock."""
    from flexforge.commands.accept import accept as run

    return run(_opts(), asset_id)


@cli.group()
def ci() -> None:
    """What the GitHub Action runs; inputs also come from FLEXFORGE_CI_* variables."""


def _optional_float(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    # An unset action input arrives as an empty string.
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an amount in USD") from None
    if not number >= 0 or number == float("inf"):
        raise click.BadParameter(f"{value!r} is not an amount in USD")
    return number


def _flag(ctx: click.Context, param: click.Parameter, value: str | None) -> bool:
    from flexforge.ci.action import env_flag

    try:
        return env_flag(value, default=True)
    except FlexforgeError as exc:
        raise click.BadParameter(str(exc)) from None


@ci.command("run")
@click.option(
    "--command",
    "command",
    envvar="FLEXFORGE_CI_COMMAND",
    default="check",
    show_default=True,
    type=click.Choice(["check", "plan", "build"]),
    help="check: fail if anything must be generated.",
)
@click.option("--provider", envvar="FLEXFORGE_CI_PROVIDER", default=None, help=PROVIDER_HELP)
@click.option(
    "--max-cost",
    envvar="FLEXFORGE_CI_MAX_COST",
    default=None,
    callback=_optional_float,
    metavar="USD",
    help="build: never start a task that could take the spend over USD.",
)
@click.option(
    "--comment",
    envvar="FLEXFORGE_CI_COMMENT",
    default="true",
    callback=_flag,
    help="Post or update the pull-request comment (true/false).",
)
@click.option(
    "--summary",
    envvar="FLEXFORGE_CI_SUMMARY",
    default="true",
    callback=_flag,
    help="Write the job summary (true/false).",
)
@click.option("--args", "args", envvar="FLEXFORGE_CI_ARGS", default="", help="More `build` arguments.")
@click.option(
    "--shard-locks",
    envvar="FLEXFORGE_CI_SHARD_LOCKS",
    default="",
    help="build: merge the *.lock files under this folder (shard runners' locks) first.",
)
@click.option(
    "--out-dir",
    envvar="FLEXFORGE_CI_OUT_DIR",
    default="flexforge-ci",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where plan.json, review.json go.",
)
@click.option(
    "--previews",
    envvar="FLEXFORGE_CI_PREVIEWS",
    default="true",
    callback=_flag,
    help="check/plan: render draft previews of what would be built (true/false).",
)
@click.option(
    "--publish",
    envvar="FLEXFORGE_CI_PUBLISH",
    default="none",
    show_default=True,
    type=click.Choice(["none", "push", "pull-request"]),
    help="build: commit the images and lock back, or open a pull request with them.",
)
@global_options
@handle_errors
def ci_run(
    command: str,
    provider: str | None,
    max_cost: float | None,
    comment: bool,
    summary: bool,
    args: str,
    shard_locks: str,
    out_dir: Path,
    previews: bool,
    publish: str,
) -> int:
    """Validate, plan and review; then check (frozen) or build. For the GitHub Action."""
    import shlex

    from flexforge.ci.action import Inputs
    from flexforge.commands.ci import ci_run as run

    try:
        extra = shlex.split(args)
    except ValueError as exc:
        raise click.BadParameter(f"{args!r}: {exc}", param_hint="--args") from None
    inputs = Inputs(
        command=command,
        provider=provider or None,
        max_cost=max_cost,
        comment=comment,
        summary=summary,
        args=extra,
        shard_locks=Path(shard_locks) if shard_locks.strip() else None,
        out_dir=out_dir,
        token=os.environ.get("FLEXFORGE_CI_TOKEN", ""),
        publish=publish,
        previews=previews,
    )
    return run(_opts(), inputs)


@ci.command("hook")
@click.argument("hook", type=click.Choice(["validate", "frozen"]))
@click.argument("files", nargs=-1)
@global_options
@handle_errors
def ci_hook(hook: str, files: tuple[str, ...]) -> int:
    """pre-commit: validate, or build --frozen, each project that FILES belong to."""
    from flexforge.ci.hooks import run_hook

    return run_hook(hook, files, _opts().cwd())


@ci.command("comment")
@click.argument("review_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@global_options
@handle_errors
def ci_comment(review_file: Path) -> int:
    """Post a review.json made by an untrusted pull-request job (run from `workflow_run`)."""
    from flexforge.commands.ci import ci_comment as run

    return run(review_file, os.environ.get("FLEXFORGE_CI_TOKEN", ""))


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write the site to (default: gallery/ in the project's user cache; printed).",
)
@provider_option
@global_options
@handle_errors
def gallery(out: Path | None, provider: str | None) -> int:
    """A static site of every asset: picture, status, prompt, parameters, lineage; filters."""
    from flexforge.commands.gallery import gallery as run

    return run(_opts(), provider, out)


@cli.command()
@click.argument("revs", nargs=-1, metavar="[BASE [HEAD]]")
@click.option(
    "--html",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write a page with before, after and a difference heatmap to DIR.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (docs/review-json.md).")
@global_options
@handle_errors
def diff(revs: tuple[str, ...], html: Path | None, as_json: bool) -> int:
    """What changed between two commits (default: the merge-base with the default branch
    against the working tree, as a pull request sees it)."""
    from flexforge.commands.diff import diff as run

    return run(_opts(), revs, html, as_json)


def _transfer_jobs(func: F) -> F:
    return click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=1, max=256),
        default=32,
        show_default=True,
        help="Transfers at once.",
    )(func)


@cli.command()
@_transfer_jobs
@global_options
@handle_errors
def push(jobs: int) -> int:
    """Upload the lock's images the team remote lacks (settings: remote, or $FLEXFORGE_REMOTE)."""
    from flexforge.commands.transfer import push as run

    return run(_opts(), jobs)


@cli.command()
@_transfer_jobs
@global_options
@handle_errors
def pull(jobs: int) -> int:
    """Download the lock's images from the team remote into the local cache, verified."""
    from flexforge.commands.transfer import pull as run

    return run(_opts(), jobs)


@cli.group("lock")
def lock_group() -> None:
    """Work on flexforge.lock itself."""


@lock_group.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="LOCK...")
@provider_option
@global_options
@handle_errors
def lock_merge(files: tuple[Path, ...], provider: str | None) -> int:
    """Merge the locks of `build --shard I/N` runners into this project's lock, with no API call."""
    from flexforge.commands.lock import merge as run

    return run(_opts(), files, provider)


def _opts() -> GlobalOptions:
    opts = click.get_current_context().find_object(GlobalOptions)
    assert opts is not None
    return opts


def _plan_options(
    ids: tuple[str, ...], replace: tuple[str, ...], reseed: tuple[str, ...], tags: tuple[str, ...] = ()
) -> Any:
    from flexforge.options import PlanOptions

    return PlanOptions(frozenset(ids), frozenset(replace), frozenset(reseed), frozenset(tags))


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="flexforge")
    except BrokenPipeError:  # `flexforge --help | head -1`: click's own output, outside a command
        sys.exit(_reader_went_away())
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT:
            raise
        # `flexforge --help > /dev/full`: what click writes (help, usage, version) before any
        # command runs, whose own errors handle_errors words.
        click.echo(printable(f"error: cannot write the output: {exc.strerror}"), err=True)
        sys.exit(EXIT_ERROR)
