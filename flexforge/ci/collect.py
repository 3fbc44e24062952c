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


def changes_from(plan: Plan, head: Lock, base: Lock | None, project: str) -> list[AssetChange]:
    """Every asset the pull request changes or would build, in build order, then removals."""
    before = base.entries if base is not None else {}
    changes: list[AssetChange] = []
    for step in plan.steps:
        asset_id = step.asset.id
        old: LockEntry | None = before.get(asset_id)
        new: LockEntry | None = head.entries.get(asset_id)
        out = _joined(project, step.asset.out)
        was = _joined(project, old.out) if old is not None else None
        if step.action != NONE:
            kind = step.action
            after = None
        elif old is None:
            kind, after = "added", out
        elif new is not None and (new.sha256 != old.sha256 or new.out != old.out):
            kind, after = "updated", out
        else:
            continue
        changes.append(
            AssetChange(
                id=asset_id,
                kind=kind,
                reasons=tuple(step.reasons),
                out=out,
                model=step.asset.model,
                estimated_cost_usd=step.estimated_cost_usd,
                before=was,
                after=after,
            )
        )
    in_manifest = {s.asset.id for s in plan.steps}
    for asset_id in plan.orphaned:
        entry = head.entries.get(asset_id)
        changes.append(
            AssetChange(id=asset_id, kind="orphaned", out=_joined(project, entry.out) if entry else "")
        )
    orphaned = set(plan.orphaned)
    for asset_id, old in sorted(before.items()):
        if asset_id not in in_manifest and asset_id not in orphaned:
            out = _joined(project, old.out)
            changes.append(AssetChange(id=asset_id, kind="removed", out=out, before=out))
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
