"""What the composite action runs (`flexforge ci run`): validate, plan, review, and check or build.

The YAML of `action.yml` only passes inputs through `env:`; every decision is here, so that it
runs in tests with a fake event, output file and summary file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexforge.ci.collect import lock_at, repository_root, review_from_plan
from flexforge.ci.comment import marker, render_comment, render_summary
from flexforge.ci.review import Review
from flexforge.ci.runner import Runner
from flexforge.context import GlobalOptions, Project, choose_provider
from flexforge.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, FlexforgeError, ManifestError, UsageError
from flexforge.manifest import Manifest
from flexforge.options import PlanOptions
from flexforge.planner import GENERATES, HELD, RESTORES, Plan

COMMANDS = ("check", "plan", "build")
FREE_PROVIDERS = ("draft",)
PULL_REQUEST_EVENTS = ("pull_request", "pull_request_target")


@dataclass(slots=True)
class Inputs:
    """The action's inputs, as `flexforge ci run` receives them."""

    command: str = "check"
    provider: str | None = None
    max_cost: float | None = None
    comment: bool = True
    summary: bool = True
    args: list[str] = field(default_factory=list)
    shard_locks: Path | None = None  # build: merge the shard runners' locks under it first
    out_dir: Path = Path("flexforge-ci")
    token: str = ""
    publish: str = "none"  # build: none | push | pull-request
    previews: bool = True  # check/plan: draft previews of what would be built


def dig(doc: Any, *keys: str) -> Any:
    """doc[k1][k2]... or None where a level is missing or not an object (payloads vary)."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def pull_request_of(event: dict[str, Any]) -> dict[str, Any]:
    pr = event.get("pull_request")
    return pr if isinstance(pr, dict) else {}


def from_fork(event: dict[str, Any]) -> bool:
    """A pull request whose head lives in another repository: its code is a stranger's."""
    pr = pull_request_of(event)
    if not pr:
        return False
    head = dig(pr, "head", "repo", "full_name")
    base = dig(pr, "base", "repo", "full_name")
    return not head or head != base


def refuse_untrusted_build(runner: Runner, event: dict[str, Any], provider: str) -> None:
    """Paid generation never runs on a pull request's code: it could spend the key or steal it."""
    if provider in FREE_PROVIDERS:
        return
    if runner.event_name in PULL_REQUEST_EVENTS or pull_request_of(event):
        raise UsageError(
            f"refusing a paid build ({provider}) on a {runner.event_name or 'pull request'} event: a "
            "pull request's code must not spend or see the API key. Build after merge (push to the "
            "default branch), by label or by hand; or pass provider `draft` for previews"
        )


def _number(pr: dict[str, Any]) -> int:
    number = pr.get("number")
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else 0


def _sha(value: Any) -> str:
    return value if isinstance(value, str) and len(value) == 40 else ""


def _annotate_manifest_errors(runner: Runner, exc: ManifestError, cwd: Path) -> list[str]:
    lines = []
    for d in exc.diagnostics:
        file = runner.relative_to_workspace(cwd / d.file)
        message = f"{d.path}: {d.message}" if d.path else d.message
        runner.annotate("error", message, file=file, line=d.line, col=d.col, title="flexforge validate")
        lines.append(str(d))
    return lines


def _stale(plan: Plan) -> list[str]:
    return [s.asset.id for s in plan.steps if s.action in GENERATES or s.action in HELD]


def _annotate_stale(runner: Runner, plan: Plan, manifest_file: str) -> None:
    for step in plan.steps:
        if step.action in GENERATES or step.action in HELD:
            why = f" ({', '.join(step.reasons)})" if step.reasons else ""
            hint = (
                f"keep the file with `flexforge accept {step.asset.id}`, or `build --replace {step.asset.id}`"
                if step.action in HELD
                else "run `flexforge build` and commit the images and the lock"
            )
            runner.annotate(
                "error",
                f"{step.asset.id}: {step.action}{why}; {hint}",
                file=manifest_file,
                line=step.asset.line,
                title="flexforge check",
            )


def _build(opts: GlobalOptions, inputs: Inputs, provider: str, runner: Runner) -> int:
    project = ["-f", opts.file] if opts.file else []
    if inputs.shard_locks is not None:
        merge = ["lock", "merge", "--provider", provider, *project, *_locks(inputs)]
        code = _relay(opts, runner, "flexforge lock merge", merge)
        if code != EXIT_OK:
            return code
    args = ["build", "--provider", provider, *project]
    if inputs.max_cost is not None:
        args += ["--max-cost", repr(inputs.max_cost)]
    return _relay(opts, runner, "flexforge build", args + inputs.args)


def _locks(inputs: Inputs) -> list[str]:
    """The shard locks to merge: every *.lock under the folder (one artifact per runner)."""
    folder = inputs.shard_locks
    assert folder is not None
    found = sorted(str(p) for p in folder.rglob("*.lock") if p.is_file()) if folder.is_dir() else []
    if not found:
        raise UsageError(
            f"shard-locks {folder}: no *.lock file there; download the shard runners' lock artifacts "
            "into that folder first"
        )
    return found


def _relay(opts: GlobalOptions, runner: Runner, title: str, command: list[str]) -> int:
    """Run `flexforge COMMAND...` in the project, its output relayed to the log in one group."""
    args = [sys.executable, "-m", "flexforge", *command]
    with runner.group(title), runner.untrusted():
        # Relayed line by line: the log shows progress while a long build runs.
        with subprocess.Popen(
            args,
            cwd=opts.cwd(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                runner.emit(line.rstrip("\n"))
        return child.returncode


def collect(runner: Runner, manifest: Manifest, plan: Plan) -> Review:
    """The review of this run: the plan, with the lock at the base commit (a pull request's base,
    or the commit before a push) for what changed."""
    project = Project(manifest)
    event = runner.event()
    pr = pull_request_of(event)
    root = repository_root(manifest.root) or manifest.root
    project_rel = manifest.root.relative_to(root).as_posix() if manifest.root.is_relative_to(root) else "."
    lock_rel = project.lock_path.relative_to(root).as_posix()
    base_sha = _sha(dig(pr, "base", "sha")) or _sha(event.get("before"))
    head_sha = _sha(dig(pr, "head", "sha")) or _sha(runner.sha)
    base = lock_at(root, base_sha, lock_rel)
    return review_from_plan(
        plan,
        project.lock,
        base,
        project=project_rel or ".",
        repository=runner.repository,
        server_url=runner.server_url,
        base_sha=base_sha,
        head_sha=head_sha,
        run_url=runner.run_url,
        pull_request=_number(pr),
    )


def report(runner: Runner, inputs: Inputs, review: Review, plan: Plan | None) -> None:
    """Files, outputs and the job summary every command leaves behind."""
    out = inputs.out_dir
    out.mkdir(parents=True, exist_ok=True)
    review_file = out / "review.json"
    review_file.write_text(review.to_json(), encoding="utf-8")
    comment_file = out / "comment.md"
    comment_file.write_text(render_comment(review), encoding="utf-8")
    if plan is not None:
        from flexforge.commands.plan import plan_json

        plan_file = out / "plan.json"
        plan_file.write_text(json.dumps(plan_json(plan), indent=2, allow_nan=False), encoding="utf-8")
        runner.set_output("plan-json", str(plan_file.resolve()))
        runner.set_output("changes", "true" if plan.has_changes else "false")
        runner.set_output("estimated-cost", f"{plan.estimated_cost_usd:.4f}")
    else:
        runner.set_output("plan-json", "")
        runner.set_output("changes", "false")
        runner.set_output("estimated-cost", "0")
    runner.set_output("review-json", str(review_file.resolve()))
    runner.set_output("comment-file", str(comment_file.resolve()))
    if inputs.summary:
        runner.summary(render_summary(review))


def post_comment(runner: Runner, inputs: Inputs, review: Review) -> None:
    """Create or update the sticky comment when this job may; say why not otherwise. A failure
    here is a warning: the review is in the job summary, and the check's verdict stands alone."""
    try:
        _post_comment(runner, inputs, review)
    except FlexforgeError as exc:
        runner.annotate("warning", f"the pull-request comment was not posted: {exc}", title="flexforge")


def _post_comment(runner: Runner, inputs: Inputs, review: Review) -> None:
    event = runner.event()
    if not review.pull_request:
        return
    if from_fork(event) and runner.event_name == "pull_request":
        runner.emit(
            "flexforge: a pull request from a fork gets a read-only token; the review is in the job "
            "summary and in review.json for a `workflow_run` job to post (see the README)"
        )
        return
    from flexforge.ci.rest import GitHub

    github = GitHub(runner.api_url, runner.repository, inputs.token)
    # A pull request with nothing to say gets no new comment; one already there is updated.
    quiet = not review.changes and not review.errors
    action, comment_id = github.upsert_comment(
        review.pull_request, marker(review.project), render_comment(review), create=not quiet
    )
    if action == "skipped":
        runner.emit("flexforge: no image changes; no comment made")
        return
    runner.emit(f"flexforge: {action} the pull-request comment {comment_id}")
    runner.set_output("comment-id", str(comment_id))


def run(opts: GlobalOptions, inputs: Inputs, runner: Runner) -> int:
    if inputs.command not in COMMANDS:
        raise UsageError(f"command {inputs.command!r}: choose one of {', '.join(COMMANDS)}")
    event = runner.event()
    if any(a == "--provider" or a.startswith("--provider=") for a in inputs.args):
        # The paid-build guard below reads the provider input; extra arguments must not change it.
        raise UsageError("pass the provider as the action's `provider` input, not in `args`")
    if inputs.shard_locks is not None and inputs.command != "build":
        raise UsageError(f"shard-locks is for the build command (the fan-in), not {inputs.command}")
    if inputs.command == "build" and inputs.provider:
        refuse_untrusted_build(runner, event, choose_provider(inputs.provider)[0])
    cwd = opts.cwd()
    with runner.group("flexforge validate"):
        try:
            manifest = opts.load_manifest()
        except ManifestError as exc:
            errors = _annotate_manifest_errors(runner, exc, cwd)
            pr = pull_request_of(event)
            review = Review(
                repository=runner.repository,
                server_url=runner.server_url,
                errors=tuple(errors),
                run_url=runner.run_url,
                pull_request=_number(pr),
                project=_project_rel(cwd),
            )
            report(runner, inputs, review, None)
            if inputs.comment:
                post_comment(runner, inputs, review)
            return EXIT_ERROR
        runner.emit(f"{manifest.label}: valid, {len(manifest.assets)} assets")
    # The input, else $FLEXFORGE_PROVIDER, else the manifest's `settings: provider`, else bfl.
    provider, _ = choose_provider(inputs.provider, manifest.settings)
    if inputs.command == "build":
        refuse_untrusted_build(runner, event, provider)
    code = EXIT_OK
    if inputs.command == "build":
        code = _build(opts, inputs, provider, runner)
        if code != EXIT_INTERRUPTED:
            # Whatever finished is kept, even when some asset failed or the budget ran out.
            _publish(runner, inputs, manifest)
    plan = _plan(manifest, provider)
    review = collect(runner, manifest, plan)
    if inputs.previews and inputs.command != "build" and review.pending:
        review = _previews(runner, inputs, manifest, review)
    report(runner, inputs, review, plan)
    if inputs.comment:
        post_comment(runner, inputs, review)
    if inputs.command == "check":
        code = _check(opts, runner, plan, provider, manifest)
    return code


def _previews(runner: Runner, inputs: Inputs, manifest: Manifest, review: Review) -> Review:
    """Draft previews for the artifact; a failure here costs the comment its previews, not the check."""
    from flexforge.ci.previews import render_previews

    folder = inputs.out_dir / "previews"
    url = f"{runner.run_url}#artifacts" if runner.run_url else ""
    failed: FlexforgeError | None = None
    with runner.group("flexforge previews (draft renderer)"), runner.untrusted():
        try:
            review = render_previews(manifest.root, review, folder, url)
        except FlexforgeError as exc:
            failed = exc
    if failed is not None:  # outside the stop-commands section, or GitHub would ignore it
        runner.annotate("warning", f"no draft previews: {failed}", title="flexforge previews")
    made = folder.is_dir() and any(folder.iterdir())
    runner.set_output("previews-dir", str(folder.resolve()) if made else "")
    return review


def _publish(runner: Runner, inputs: Inputs, manifest: Manifest) -> None:
    from flexforge.ci.publish import publish

    if inputs.publish == "none":
        return
    root = repository_root(manifest.root)
    if root is None:
        raise FlexforgeError(f"publish {inputs.publish}: {manifest.root} is not in a git repository")
    from flexforge.ci.rest import GitHub

    github = GitHub(runner.api_url, runner.repository, inputs.token) if runner.repository else None
    project = Project(manifest)
    with runner.group(f"flexforge publish ({inputs.publish})"):
        done = publish(
            inputs.publish,
            root=root,
            project=manifest.root,
            lock=project.lock,
            token=inputs.token,
            server_url=runner.server_url,
            github=github,
            run_id=runner.run_url.rsplit("/", 1)[-1] if runner.run_url else "",
        )
        if done.commit:
            runner.emit(f"committed {done.commit[:12]} to {done.pushed_to}")
        else:
            runner.emit("nothing new to commit")
        if done.pull_request_url:
            runner.emit(f"opened {done.pull_request_url}")
    runner.set_output("commit", done.commit)
    runner.set_output("pull-request-url", done.pull_request_url)


def _plan(manifest: Manifest, provider: str) -> Plan:
    from flexforge.commands.plan import compute_plan

    return compute_plan(Project(manifest), PlanOptions(), provider)


def _check(opts: GlobalOptions, runner: Runner, plan: Plan, provider: str, manifest: Manifest) -> int:
    """`build --frozen`: restores from the cache are made, anything to generate fails the check."""
    manifest_file = runner.relative_to_workspace(manifest.path)
    if _stale(plan):
        _annotate_stale(runner, plan, manifest_file)
        n = len(_stale(plan))
        runner.emit(
            f"flexforge check: {n} asset{'s' if n != 1 else ''} would be generated or differ from the lock"
        )
        return EXIT_ERROR
    if any(s.action in RESTORES for s in plan.steps):
        from flexforge.commands.build import build
        from flexforge.options import BuildFlags

        with runner.group("flexforge build --frozen (restores from the cache)"), runner.untrusted():
            return build(opts, PlanOptions(), provider, BuildFlags(), dry_run=False, frozen=True)
    return EXIT_OK


def _project_rel(cwd: Path) -> str:
    root = repository_root(cwd)
    if root is None or not cwd.resolve().is_relative_to(root):
        return "."
    return cwd.resolve().relative_to(root).as_posix() or "."


def run_from_env(opts: GlobalOptions, inputs: Inputs) -> int:
    runner = Runner.from_env()
    try:
        return run(opts, inputs, runner)
    except FlexforgeError as exc:
        runner.annotate("error", str(exc), title="flexforge")
        raise


def comment_from_review(review_file: Path, token: str, runner: Runner | None = None) -> int:
    """The trusted half of the fork split: post a review another (untrusted) job produced.

    The pull-request number comes from that job, so it is believed only if that pull request's
    head is the commit the triggering workflow run was for."""
    from flexforge.ci.review import from_json

    runner = runner or Runner.from_env()
    review = from_json(review_file.read_bytes())
    event = runner.event()
    found = event.get("workflow_run")
    run_event: dict[str, Any] = found if isinstance(found, dict) else {}
    expected = _sha(run_event.get("head_sha")) if run_event else ""
    if not review.pull_request:
        runner.emit("flexforge: the review is not for a pull request; nothing to comment")
        return EXIT_OK
    from flexforge.ci.rest import GitHub

    github = GitHub(runner.api_url, runner.repository, token)
    pr = github.pull_request(review.pull_request)
    head = _sha(dig(pr, "head", "sha"))
    if not expected or head != expected:
        raise FlexforgeError(
            f"the review names pull request {review.pull_request}, whose head is {head[:7] or '?'}, "
            f"but the workflow run was for {expected[:7] or '?'}: not commenting"
        )
    # Links come from the trusted event, never from the file: a bot comment must not carry a
    # stranger's URL. The run that made the review is the one this workflow_run names.
    run_url = run_event.get("html_url", "") if isinstance(run_event.get("html_url"), str) else ""
    run_url = run_url if run_url.startswith(runner.server_url + "/") else ""
    trusted = Review(
        **{
            **_fields(review),
            "repository": runner.repository,
            "server_url": runner.server_url,
            "head_sha": expected,
            "run_url": run_url,
            "previews_url": f"{run_url}#artifacts" if run_url and review.previews_url else "",
        }
    )
    action, comment_id = github.upsert_comment(
        review.pull_request, marker(trusted.project), render_comment(trusted)
    )
    runner.emit(f"flexforge: {action} the pull-request comment {comment_id}")
    runner.set_output("comment-id", str(comment_id))
    return EXIT_OK


def _fields(review: Review) -> dict[str, Any]:
    return {name: getattr(review, name) for name in review.__dataclass_fields__}


def env_flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{value!r} is not true or false")
