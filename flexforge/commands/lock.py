"""`flexforge lock merge`: the fan-in of a sharded build, N shard locks into the project lock, no API call.

Each runner of `build --shard I/N` writes a lock whose entries for its own assets are new; the
rest are the project lock's as it found them. The merge takes, from every file, the entries that
differ from the project lock, refuses two files that recorded different images for one asset,
and keeps only entries whose content key is the one the manifest asks for now (computed here
from the manifest, the reference files and the merged upstream images, as a plan would). The
lock is written once, atomically, under the build lock. Nothing is generated, fetched or asked
of any API or remote: `build --frozen` then restores the images (from the team remote).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from flexforge import knobs
from flexforge.commands.build import LOCK_TIMEOUT_ENV
from flexforge.context import GlobalOptions, choose_provider, open_project
from flexforge.errors import EXIT_OK, FlexforgeError
from flexforge.keys import changed, content_key, known_parts
from flexforge.lockfile import LockEntry, read_lock
from flexforge.manifest import Asset, Manifest
from flexforge.options import PlanOptions
from flexforge.planner import generator_of, pick_of, reference_digests, resolve_seed
from flexforge.store import Store
from flexforge.text import plural

MAX_CONFLICTS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry one shard lock has that the project lock does not (new or changed)."""

    asset_id: str
    entry: LockEntry
    origin: str  # the file, as the user named it


def merge(opts: GlobalOptions, files: tuple[Path, ...], provider: str | None) -> int:
    project = open_project(opts)
    manifest = project.manifest
    _, generator = choose_provider(provider, manifest.settings)
    with project.store.build_lock(wait=knobs.seconds(LOCK_TIMEOUT_ENV, 300.0)):
        # Read under the build lock: a build that just finished may have written it.
        lock = project.lock
        candidates = gather(files, lock.entries, project.lock_path)
        accepted, skipped = check(manifest, project.store, lock.entries, candidates, generator)
        lock.entries.update((c.asset_id, c.entry) for c in accepted)
        written = lock.save()
    for line in skipped:
        click.echo(f"  not merged: {line}", err=True)
    if not opts.quiet:
        unchanged = len(lock.entries) - len(accepted)
        click.echo(
            f"Merged {plural(len(accepted), 'entry', 'entries')} from {plural(len(files), 'file')} into "
            f"{project.lock_path.name} ({unchanged} unchanged"
            f"{f', {len(skipped)} not merged' if skipped else ''}){'' if written else '; nothing to write'}.",
            err=True,
        )
    return EXIT_OK


def gather(files: tuple[Path, ...], base: dict[str, LockEntry], project_lock: Path) -> list[Candidate]:
    """Every entry that a file changes against the project lock; refused, with nothing
    written, when two files recorded different images for one asset."""
    by_asset: dict[str, Candidate] = {}
    conflicts: list[str] = []
    for path in files:
        shown = str(path)
        if not path.exists() and not path.is_symlink():
            raise FlexforgeError(f"{shown}: no such file; give the lock files the shard runners wrote")
        if path.resolve() == project_lock.resolve():
            continue  # the project lock itself: nothing to merge from it
        entries = read_lock(path, label=shown, fix="give a flexforge.lock a shard build wrote").entries
        for asset_id, entry in entries.items():
            if base.get(asset_id) == entry:
                continue  # as the project lock has it: this shard did not build it
            seen = by_asset.get(asset_id)
            if seen is None:
                by_asset[asset_id] = Candidate(asset_id, entry, shown)
            elif (seen.entry.key, seen.entry.sha256, seen.entry.out) != (entry.key, entry.sha256, entry.out):
                conflicts.append(_conflict(asset_id, seen, Candidate(asset_id, entry, shown)))
    if conflicts:
        shown_conflicts = "\n  ".join(conflicts[:MAX_CONFLICTS_SHOWN])
        more = len(conflicts) - MAX_CONFLICTS_SHOWN
        raise FlexforgeError(
            f"{plural(len(conflicts), 'asset')} recorded differently by two shard locks; nothing was "
            f"written:\n  {shown_conflicts}{f'{chr(10)}  ... and {more} more' if more > 0 else ''}\n"
            "Each asset belongs to one shard when every runner builds the same commit with the same "
            "I/N: merge the locks of one run of the shards, or leave out the file of the stale run"
        )
    return list(by_asset.values())


def _conflict(asset_id: str, first: Candidate, second: Candidate) -> str:
    def said(c: Candidate) -> str:
        e = c.entry
        return f"{c.origin} has key {e.key[:12]}, image {e.sha256[:12]} at {e.out}"

    return f"{asset_id}: {said(first)}; {said(second)}"


def check(
    manifest: Manifest,
    store: Store,
    base: dict[str, LockEntry],
    candidates: list[Candidate],
    generator: str,
) -> tuple[list[Candidate], list[str]]:
    """The candidates whose key is the one the manifest asks for now, and why each other one is
    not merged. Keys are computed in dependency order: an asset's key includes its upstream
    assets' images, as merged."""
    wanted = {c.asset_id: c for c in candidates}
    skipped = [
        f"{c.asset_id} ({c.origin}): not in the manifest; `flexforge gc` lists what is left of removed assets"
        for c in candidates
        if c.asset_id not in manifest.assets
    ]
    accepted: list[Candidate] = []
    outputs: dict[str, str | None] = {}  # each asset's image in the merged lock, if it is current
    for asset_id, asset in manifest.assets.items():
        candidate = wanted.get(asset_id)
        if candidate is not None:
            why = _stale(asset, candidate.entry, store, outputs, generator)
            if why is None:
                accepted.append(candidate)
                outputs[asset_id] = candidate.entry.sha256
                continue
            skipped.append(f"{asset_id} ({candidate.origin}): {why}; `flexforge build` makes it")
        entry = base.get(asset_id)
        current = entry is not None and _stale(asset, entry, store, outputs, generator) is None
        outputs[asset_id] = entry.sha256 if current and entry is not None else None
    return accepted, skipped


def _stale(
    asset: Asset, entry: LockEntry, store: Store, outputs: dict[str, str | None], generator: str
) -> str | None:
    """Why `entry` is not what the manifest asks for `asset` now, or None when it is."""
    if entry.out != asset.out:
        return f"recorded at {entry.out}, but the manifest writes it to {asset.out}"
    seed = (
        pick_of(asset, entry, PlanOptions())
        if asset.rendition is not None and "select" in asset.rendition
        else resolve_seed(asset, entry, reseed=False)
    )
    digests = reference_digests(asset, store, outputs)
    missing = [ref for ref, d in zip(asset.references, digests, strict=True) if d is None]
    if missing:
        upstream = [ref for ref in missing if ref in asset.asset_refs]
        if upstream:
            return f"it is made from {upstream[0]}, whose image in the merged lock is not current"
        return f"its reference {missing[0]} cannot be read"
    gen = generator_of(asset, generator)
    assert seed is not None  # an entry always gives one
    key = content_key(asset, gen, seed, [d for d in digests if d is not None])
    if key.key == entry.key:
        return None
    reasons = changed(known_parts(asset, gen, seed, list(digests)), entry.parts)
    return f"built for another request ({', '.join(reasons) or 'key differs'})"
