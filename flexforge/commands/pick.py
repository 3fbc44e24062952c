"""`flexforge pick ID K`: select another candidate of a `variants:` asset, for free (and
`--more N`: add candidates without touching the others)."""

from __future__ import annotations

import re

import click

from flexforge.commands.build import build
from flexforge.commands.plan import compute_plan
from flexforge.context import GlobalOptions, open_project
from flexforge.errors import EXIT_OK, FlexforgeError, UsageError
from flexforge.expand import MAX_VARIANTS
from flexforge.manifest import Asset, Manifest
from flexforge.options import BuildFlags, PlanOptions
from flexforge.planner import GENERATES


def pick(opts: GlobalOptions, asset_id: str, candidate: int | None, more: int, provider: str | None) -> int:
    project = open_project(opts)
    asset = project.manifest.require(asset_id)
    count = _variants(asset)
    if more:
        return _more(opts, project.manifest, asset, count, more, provider)
    if candidate is None:
        raise UsageError(f"pick {asset_id}: say which candidate (1..{count}), or --more N")
    if not 1 <= candidate <= count:
        raise UsageError(f"pick {asset_id} {candidate}: {asset_id} has candidates 1..{count}")
    if asset.seed is not None:
        raise UsageError(
            f"pick {asset_id}: the manifest picks candidate {asset.seed} (pick: on line {asset.line}); "
            "change it there"
        )
    options = PlanOptions(targets=frozenset([asset_id]), picks=((asset_id, candidate),))
    plan = compute_plan(project, options, provider)
    paid = [s.asset.id for s in plan.steps if s.action in GENERATES and s.asset.rendition is None]
    lost = [p for p in paid if p in project.lock.entries and not project.manifest.assets[p].written]
    if lost:
        raise FlexforgeError(
            f"pick {asset_id} {candidate}: the image of {', '.join(lost)} is in no cache, remote or "
            "commit this machine can read (candidates are kept in the cache unless `settings: "
            f"variants_dir:` commits them); `flexforge build --replace {lost[0]}` makes it again "
            "(paid), then pick"
        )
    if paid:
        raise FlexforgeError(
            f"pick {asset_id} {candidate}: {', '.join(paid)} would have to be generated (paid) first; "
            f"run `flexforge build {asset_id}` to make its candidates, then pick"
        )
    code = build(opts, options, provider, BuildFlags(), dry_run=False, frozen=False)
    if code == EXIT_OK and not opts.quiet:
        users = _dependents(project.manifest, asset_id)
        follow = (
            f"; {len(users)} dependent(s) follow it at the next build ({', '.join(users)})" if users else ""
        )
        click.echo(f"{asset_id}: candidate {candidate} of {count} selected, no API call{follow}.")
    return code


def _variants(asset: Asset) -> int:
    if asset.rendition is None or "select" not in asset.rendition:
        raise UsageError(f"{asset.id} has no candidates: add `variants: N` to it in the manifest")
    return int(asset.rendition["select"])


def _dependents(manifest: Manifest, asset_id: str) -> list[str]:
    found: list[str] = []
    wanted = {asset_id}
    for other in manifest.assets.values():  # topological order: users come after what they use
        if wanted & set(other.asset_refs):
            wanted.add(other.id)
            found.append(other.id)
    return found


def _more(
    opts: GlobalOptions, manifest: Manifest, asset: Asset, count: int, more: int, provider: str | None
) -> int:
    """Raise `variants:` in the manifest's text (only that number changes) and build the new
    candidates; the others, and the pick, stay as they are."""
    total = count + more
    if total > MAX_VARIANTS:
        raise UsageError(f"{asset.id}: {total} candidates is over the limit of {MAX_VARIANTS}")
    lines = manifest.path.read_text(encoding="utf-8").splitlines(keepends=True)
    pattern = re.compile(rf"(\bvariants:\s*){count}\b")
    # The asset's own block: from its declaring line to the next line indented as little.
    start = asset.line - 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent
        ),
        len(lines),
    )
    for i in range(start, end):
        if pattern.search(lines[i]):
            lines[i] = pattern.sub(rf"\g<1>{total}", lines[i], count=1)
            break
    else:
        raise UsageError(
            f"{asset.id}: cannot find `variants: {count}` near line {asset.line}; edit it by hand"
        )
    from flexforge.fsutil import atomic_write

    # Atomic: an interrupted edit must never leave a half-written manifest.
    atomic_write(manifest.path, "".join(lines).encode("utf-8"))
    click.echo(f"{manifest.label}:{i + 1}: variants: {count} -> {total}", err=True)
    return build(
        opts, PlanOptions(targets=frozenset([asset.id])), provider, BuildFlags(), dry_run=False, frozen=False
    )
