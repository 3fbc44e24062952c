"""`flexforge accept ID`: adopt the bytes at an asset's output path (a hand edit, an agency's
image) as that asset's output in the lock."""

from __future__ import annotations

import secrets

import click

from flexforge import gitblobs
from flexforge.context import GlobalOptions, Project, choose_provider, open_project
from flexforge.errors import EXIT_OK, FlexforgeError, clip
from flexforge.fsutil import FileTooLarge, read_regular
from flexforge.imaging import ImageCheckError, lfs_pointer, verify_image
from flexforge.options import PlanOptions
from flexforge.outputs import Outputs
from flexforge.planner import NONE, Facts, Step, step_for, unusable_output
from flexforge.store import KeyRecord

MAX_ACCEPTED_BYTES = 256 * 2**20  # a link to /dev/zero stops here


def accept(opts: GlobalOptions, asset_id: str) -> int:
    project = open_project(opts)
    asset = project.manifest.require(asset_id)
    if not asset.written:
        raise FlexforgeError(
            f"{asset_id} is a candidate kept in the cache, never read from {clip(asset.out, 120)}; "
            "set `settings: variants_dir:` to write and commit candidates, then accept edits to them"
        )
    # The lock is read under the build lock: a build running now may be about to rewrite it.
    with project.store.build_lock():
        path = project.manifest.root / asset.out
        try:
            data = read_regular(path, MAX_ACCEPTED_BYTES)
        except FileNotFoundError:
            raise FlexforgeError(f"{clip(asset.out, 120)} does not exist; nothing to accept") from None
        except FileTooLarge:
            raise FlexforgeError(f"{clip(asset.out, 120)} is larger than any image flexforge makes") from None
        except OSError as exc:  # a folder, a FIFO, a file this user may not read
            raise FlexforgeError(f"{asset_id}: {unusable_output(asset.out, exc)}") from None
        _check(data, project, asset_id)
        entry = project.lock.entries.get(asset_id)
        # The generator of the entry being replaced keys the adopted bytes; a new entry takes
        # the project's default provider's generator.
        generator = entry.generator if entry else choose_provider(None, project.manifest.settings)[1]
        step = _step(project, asset_id, generator)
        if step.action == NONE:
            click.echo(f"{asset_id}: {asset.out} already matches the lock; nothing to accept")
            return EXIT_OK
        sha = project.store.put_object(data)
        gitblobs.note(sha, gitblobs.blob_id(data))
        assert step.key is not None and step.seed is not None
        # What the replaced entry said of who made and paid for the image stays with it.
        provider, task_id, cost = (
            (entry.provider, entry.task_id, entry.cost_usd) if entry else ("accepted", None, None)
        )
        record = KeyRecord(sha, len(data), provider, step.seed, task_id, cost)
        # The accepted bytes now stand for this key: a later restore brings them back, not the old.
        project.store.put_key_record(step.key.key, record)
        outputs = Outputs(project.lock, project.store)
        outputs.record(asset, step.key, step.seed, generator, record)
        flushed = outputs.close()
        if flushed.failed:
            raise FlexforgeError(f"{asset_id}: not accepted: {flushed.failed[asset_id]}")
    click.echo(
        f"{asset_id}: accepted {asset.out} ({len(data)} bytes, sha256 {sha[:12]}); "
        "assets built on it will regenerate"
    )
    return EXIT_OK


def _check(data: bytes, project: Project, asset_id: str) -> None:
    """Adopt only a real image of the declared format and size: the key will claim it is."""
    asset = project.manifest.assets[asset_id]
    if lfs_pointer(data):
        raise FlexforgeError(
            f"{asset.out} is a Git LFS pointer, not the image: run `git lfs pull`, then accept again"
        )
    width, height = asset.final_size or (asset.width, asset.height)
    try:
        verify_image(data, width, height, asset.output_format)
    except ImageCheckError as exc:
        raise FlexforgeError(
            f"{asset.out} cannot be {asset_id}'s output: {exc}; change the asset's width, height or "
            "output_format in the manifest to match the file, or convert the file"
        ) from None


def _step(project: Project, asset_id: str, generator: str) -> Step:
    """What the asset needs with its upstream outputs as they are on disk now; a seed is drawn
    and pinned for an asset that has none (an agency's image joining the set)."""
    manifest = project.manifest
    asset = manifest.assets[asset_id]
    facts = Facts.gather(manifest, project.lock, project.store, generator, PlanOptions())
    upstream = {ref: project.store.digest(manifest.assets[ref].out) for ref in asset.asset_refs}
    step = step_for(asset, facts, upstream)
    missing = [r for r, d in zip(asset.references, step.reference_digests or [], strict=True) if d is None]
    if missing:
        raise FlexforgeError(
            f"{asset_id}: its reference {missing[0]} is missing; run `flexforge build {asset_id}` first"
        )
    if step.seed is None:
        seed = secrets.randbelow(2**32)
        project.store.pin_seed(asset_id, seed)
        step = step_for(asset, facts, upstream, seed=seed)
    return step
