"""`flexforge push` and `flexforge pull`: move the lock's images between this machine and the team remote."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, TypeVar

import click

from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_ERROR, EXIT_OK, FlexforgeError
from flexforge.sources import WORKING_TREE, Source, Sources
from flexforge.store import KeyRecord
from flexforge.text import plural

if TYPE_CHECKING:
    from flexforge.lockfile import LockEntry
    from flexforge.remote import FsspecRemote

T = TypeVar("T")


def _remote(project: Project, *, writing: bool) -> FsspecRemote:
    remote = project.remote
    if remote is None:
        raise FlexforgeError(
            "no team remote: add `settings: remote: url: s3://bucket/prefix` to the manifest, "
            "or set FLEXFORGE_REMOTE"
        )
    if writing and remote.read_only:
        raise FlexforgeError(f"remote {remote.url} is read-only here; push from a trusted machine")
    return remote


def push(opts: GlobalOptions, jobs: int) -> int:
    """Upload every image the lock names that the remote lacks, with its key record."""
    project = open_project(opts)
    remote = _remote(project, writing=True)
    entries = dict(project.lock.entries)
    held = remote.held()  # one listing, not a look per image
    work: list[tuple[str, LockEntry]] = []
    for asset_id, entry in entries.items():
        if (entry.key, entry.sha256) not in held:
            held.add((entry.key, entry.sha256))  # two assets of one key: one upload
            work.append((asset_id, entry))
    missing: list[str] = []
    sources = Sources(project.lock, project.store)

    def upload(item: tuple[str, LockEntry]) -> None:
        asset_id, entry = item
        data = _local_bytes(project, entry, sources)
        if data is None:
            missing.append(asset_id)
            return
        remote.put(entry.key, data, dataclasses.asdict(_record(entry)))

    failed = _run(work, upload, jobs, "push", opts)
    done = len(work) - len(failed) - len(missing)
    summary = f"Pushed {plural(done, 'image')} to {remote.url} ({len(entries) - len(work)} already there)."
    notes = [f"not pushed: {a}: its image is neither in place nor in the cache" for a in missing]
    return _report(opts, summary, notes, failed=bool(failed))


def pull(opts: GlobalOptions, jobs: int) -> int:
    """Download every image the lock names that this machine's cache lacks; a build then puts
    them in place with no API call."""
    project = open_project(opts)
    remote = _remote(project, writing=False)
    store = project.store
    manifest = project.manifest
    entries = {a: e for a, e in project.lock.entries.items() if not store.has_object(e.sha256)}
    held = remote.held() if entries else set()  # one listing, not a look per image
    work: list[tuple[str, LockEntry]] = []
    seen: set[str] = set()
    for asset_id, entry in entries.items():
        if (entry.key, entry.sha256) in held and entry.sha256 not in seen:
            seen.add(entry.sha256)  # two assets of one image: one download
            work.append((asset_id, entry))
    absent = sum((e.key, e.sha256) not in held for e in entries.values())
    bad: list[str] = []

    def download(item: tuple[str, LockEntry]) -> None:
        from flexforge.imaging import ImageCheckError, verify_image

        asset_id, entry = item
        data = remote.get(entry.key, entry.sha256)  # None unless its sha256 matches
        asset = manifest.assets.get(asset_id)
        try:
            if data is None:
                raise ImageCheckError("missing or damaged in the remote")
            if asset is not None:
                verify_image(data, asset.width, asset.height, asset.output_format)
        except ImageCheckError as exc:
            bad.append(f"{asset_id}: {exc}")
            return
        # The object alone: the lock names its key, and a build finds a lock entry's image in
        # the cache by its digest (a key record per image would double the files written).
        store.put_object(data)

    failed = _run(work, download, jobs, "pull", opts)
    done = len(work) - len(failed) - len(bad)
    summary = (
        f"Pulled {plural(done, 'image')} from {remote.url} "
        f"({len(project.lock.entries) - len(entries)} already here, {absent} not in the remote)."
    )
    return _report(opts, summary, [f"not pulled: {line}" for line in bad], failed=bool(failed))


def _report(opts: GlobalOptions, summary: str, notes: list[str], *, failed: bool) -> int:
    """A transfer's summary line (unless quiet), then each image it left out; exit 1 if any."""
    if not opts.quiet:
        click.echo(summary, err=True)
    for note in notes:
        click.echo(f"  {note}", err=True)
    return EXIT_ERROR if failed or notes else EXIT_OK


def _local_bytes(project: Project, entry: LockEntry, sources: Sources) -> bytes | None:
    """The entry's image from the cache, else from its output file if that still has its bytes:
    a plain file inside the project, reached through no link (a committed lock names any path,
    and a committed link could point anywhere on this machine), read no further than its size."""
    from flexforge.fsutil import sha256_bytes

    data = project.store.read_object(entry.sha256)
    if data is not None:
        return data
    if not sources.in_tree(entry.out):
        return None
    data = sources.read(Source(WORKING_TREE, entry.sha256, entry.size, entry.out))
    return data if data is not None and sha256_bytes(data) == entry.sha256 else None


def _record(entry: LockEntry) -> KeyRecord:
    return KeyRecord(entry.sha256, entry.size, entry.provider, entry.seed, entry.task_id, entry.cost_usd)


def _run(
    items: list[T], one: Callable[[T], None], jobs: int, verb: str, opts: GlobalOptions
) -> list[tuple[T, str]]:
    """`one` over every item on `jobs` threads, with a progress bar on a terminal; failures are
    reported one line each and returned."""
    failed: list[tuple[T, str]] = []
    if not items:
        return failed
    with ThreadPoolExecutor(max_workers=jobs) as pool, _progress(len(items), verb, opts) as advance:
        futures = {pool.submit(one, item): item for item in items}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
                failed.append((futures[future], str(exc)))
            advance()
    for item, reason in failed[:20]:
        click.echo(f"  {verb} failed: {item[0] if isinstance(item, tuple) else item}: {reason}", err=True)
    if len(failed) > 20:
        click.echo(f"  ... and {len(failed) - 20} more", err=True)
    return failed


class _progress:
    """A rich progress bar on a terminal; nothing otherwise (CI logs get the summary line)."""

    def __init__(self, total: int, verb: str, opts: GlobalOptions) -> None:
        import sys

        self.bar = None
        if sys.stderr.isatty() and not opts.quiet:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True, no_color=not opts.color), transient=True)
            self.task = self.bar.add_task(f"{verb}ing", total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.bar is not None:
            self.bar.start()
        return self.advance

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
