"""`flexforge accept ID`: adopt hand-edited output bytes into the lock."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_OK, FlexforgeError, clip
from flexforge.fsutil import FileTooLarge, read_regular
from flexforge.keys import ContentKey, content_key
from flexforge.planner import reference_digests, resolve_seed, unusable_output
from flexforge.store import KeyRecord

MAX_ACCEPTED_BYTES = 256 * 2**20  # a link to /dev/zero stops here


def current_key(project: Project, asset_id: str, generator: str) -> ContentKey:
    """The key of `asset_id` from the manifest and the files on disk as they are now."""
    asset = project.manifest.assets[asset_id]
    entry = project.lock.entries.get(asset_id)
    seed = resolve_seed(asset, entry, reseed=False)
    upstream = {ref: project.store.digest(project.manifest.assets[ref].out) for ref in asset.asset_refs}
    digests = reference_digests(asset, project.store, upstream)
    missing = [ref for ref, d in zip(asset.references, digests, strict=True) if d is None]
    if seed is None or missing:
        raise FlexforgeError(
            f"{asset_id}: {'its reference ' + missing[0] + ' is missing' if missing else 'no seed yet'}; "
            f"run `flexforge build {asset_id}` first"
        )
    return content_key(asset, generator, seed, [d for d in digests if d is not None])


def accept(opts: GlobalOptions, asset_id: str) -> int:
    project = open_project(opts)
    asset = project.manifest.assets.get(asset_id)
    if asset is None:
        raise FlexforgeError(f"no asset {asset_id!r} in {project.manifest.label}")
    # The lock is read under the build lock: a build running now may be about to rewrite it.
    with project.store.build_lock():
        entry = project.lock.entries.get(asset_id)
        if entry is None:
            raise FlexforgeError(f"{asset_id} has never been built; run `flexforge build {asset_id}` first")
        path = project.manifest.root / asset.out
        try:
            data = read_regular(path, MAX_ACCEPTED_BYTES)
        except FileNotFoundError:
            raise FlexforgeError(f"{clip(asset.out, 120)} does not exist; nothing to accept") from None
        except FileTooLarge:
            raise FlexforgeError(f"{clip(asset.out, 120)} is larger than any image flexforge makes") from None
        except OSError as exc:
            raise FlexforgeError(f"{asset_id}: {unusable_output(asset.out, exc)}") from None
        sha = project.store.put_object(data)
        if sha == entry.sha256:
            click.echo(f"{asset_id}: {asset.out} already matches the lock; nothing to accept")
            return EXIT_OK
        # Adopt the bytes for the manifest as it is now, so the next plan finds them up to date.
        key = current_key(project, asset_id, entry.generator)
        entry.key, entry.parts = key.key, key.parts
        entry.sha256, entry.size, entry.out = sha, len(data), asset.out
        # The accepted bytes now stand for this key: a later restore brings them back, not the old.
        record = KeyRecord(sha, len(data), entry.provider, entry.seed, entry.task_id, entry.cost_usd)
        project.store.put_key_record(entry.key, record)
        project.store.remember_written(asset.out, sha)
        project.lock.save()
        project.store.save()
    click.echo(
        f"{asset_id}: accepted {asset.out} ({len(data)} bytes, sha256 {sha[:12]}); "
        "assets built on it will regenerate"
    )
    return EXIT_OK
