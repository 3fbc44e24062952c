"""Where a Review's data comes from today: the plan at the head, and the lock at the base and head.

When `flexforge diff --json` lands, a second collector can fill the same Review; the renderer in
`comment.py` never sees where the data came from.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from flexforge.ci.review import AssetChange, Review
from flexforge.errors import FlexforgeError
from flexforge.lockfile import Lock, LockEntry, read_lock
from flexforge.planner import NONE, Plan


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=check)


def repository_root(start: Path) -> Path | None:
    """The top of the git work tree holding `start`, or None outside git."""
    try:
        done = git(start, "rev-parse", "--show-toplevel", check=False)
    except FileNotFoundError:  # no git installed
        return None
    if done.returncode != 0:
        return None
    return Path(done.stdout.decode().strip()).resolve()


def lock_at(root: Path, commit: str, lock_rel: str) -> Lock | None:
    """The lock as committed at `commit`, or None when that commit or that file is not there."""
    if not commit:
        return None
    done = git(root, "show", f"{commit}:{lock_rel}", check=False)
    if done.returncode != 0:
        return None
    with tempfile.TemporaryDirectory(prefix="flexforge-lock-") as tmp:
        path = Path(tmp) / "flexforge.lock"
        path.write_bytes(done.stdout)
        try:
            return read_lock(path)
        except FlexforgeError:
            return None  # a broken lock at the base: every image shows as new


def _joined(project: str, out: str) -> str:
    return str(PurePosixPath(project) / out) if project not in ("", ".") else out


def committed(head: Lock, base: Lock | None, project: str) -> dict[str, AssetChange]:
    """What the pull request's commits changed, by asset id, as `flexforge diff` classifies it
    (flexforge.report.compare: added, regenerated, restored, edited, renamed, removed)."""
    from flexforge.report import UNCHANGED, Revision, State, compare

    if base is None:
        return {}
    model = compare(
        State(Revision(None, "base"), base.entries, {}),
        State(Revision(None, "head"), head.entries, {}),
        set(),  # keys known before the base: not looked up here, so nothing counts as restored
    )
    found: dict[str, AssetChange] = {}
    for row in model.assets:
        if row.change == UNCHANGED:
            continue
        reasons = [f"from {row.previous_id}"] if row.previous_id else []
        reasons += row.changed_parts
        side = row.after or row.before
        found[row.id] = AssetChange(
            id=row.id,
            kind=row.change,
            reasons=tuple(reasons),
            out=_joined(project, side.out) if side is not None else "",
            model=row.after.model if row.after else "",
            before=_joined(project, row.before.out) if row.before else None,
            after=_joined(project, row.after.out) if row.after else None,
            paid_usd=row.cost_usd,
        )
    return found


def changes_from(plan: Plan, head: Lock, base: Lock | None, project: str) -> list[AssetChange]:
    """Every asset the pull request changes or would build, in build order, then removals.
    What is still to build wins over what the commits changed: the reviewer sees what merging
    leads to."""
    done = committed(head, base, project)
    before = base.entries if base is not None else {}
    changes: list[AssetChange] = []
    for step in plan.steps:
        asset_id = step.asset.id
        if step.action == NONE:
            if asset_id in done:
                changes.append(done.pop(asset_id))
            elif base is None and asset_id in head.entries:
                # No base lock to compare with (a first commit, a shallow clone): all is new.
                changes.append(
                    AssetChange(
                        asset_id,
                        "added",
                        (),
                        _joined(project, step.asset.out),
                        step.asset.model,
                        after=_joined(project, step.asset.out),
                    )
                )
            continue
        done.pop(asset_id, None)
        old: LockEntry | None = before.get(asset_id)
        changes.append(
            AssetChange(
                id=asset_id,
                kind=step.action,
                reasons=tuple(step.reasons),
                out=_joined(project, step.asset.out),
                model=step.asset.model,
                estimated_cost_usd=step.estimated_cost_usd,
                before=_joined(project, old.out) if old is not None else None,
            )
        )
    for asset_id in plan.orphaned:
        entry = head.entries.get(asset_id)
        done.pop(asset_id, None)
        changes.append(
            AssetChange(id=asset_id, kind="orphaned", out=_joined(project, entry.out) if entry else "")
        )
    changes += [c for c in done.values() if c.kind == "removed"]
    return changes


def review_from_plan(
    plan: Plan,
    head: Lock,
    base: Lock | None,
    *,
    project: str,
    repository: str = "",
    server_url: str = "https://github.com",
    base_sha: str = "",
    head_sha: str = "",
    run_url: str = "",
    pull_request: int = 0,
) -> Review:
    return Review(
        repository=repository,
        server_url=server_url,
        base_sha=base_sha if base is not None else "",
        head_sha=head_sha,
        project=project,
        provider=plan.provider,
        changes=tuple(changes_from(plan, head, base, project)),
        total_assets=len(plan.steps),
        estimated_cost_usd=plan.estimated_cost_usd,
        run_url=run_url,
        pull_request=pull_request,
    )
