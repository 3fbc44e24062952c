"""`flexforge gc`: what the project no longer needs — orphaned outputs, cached objects no lock
entry or recent build needs, journal entries whose image is already cached. Lists by default;
`--yes` deletes. Candidates written while `variants_dir` was set count as orphaned outputs once
it is unset (they stay in the cache)."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from flexforge.confine import extension_problem
from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_OK
from flexforge.imaging import EXTENSIONS
from flexforge.manifest import folded_path, sibling_outputs
from flexforge.text import plural

RECENT_DAYS = 14  # objects a build made this recently stay: a revert is likely soon after


@dataclass
class Garbage:
    outputs: list[str] = field(default_factory=list)  # root-relative
    objects: list[Path] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)  # content keys

    @property
    def empty(self) -> bool:
        return not (self.outputs or self.objects or self.journal)


def gc(opts: GlobalOptions, *, yes: bool, recent_days: float = RECENT_DAYS) -> int:
    project = open_project(opts)
    with project.store.build_lock():
        garbage = find(project, recent_days)
        _show(garbage, yes=yes)
        if yes:
            _delete(project, garbage)
    return EXIT_OK


def find(project: Project, recent_days: float = RECENT_DAYS) -> Garbage:
    garbage = Garbage()
    garbage.outputs = _orphaned_outputs(project)
    garbage.objects = _unneeded_objects(project, recent_days)
    for entry in project.store.journal_entries():
        record = project.store.key_record(entry.key)
        if record is not None and record.task_id == entry.task_id:
            garbage.journal.append(entry.key)
    return garbage


def _orphaned_outputs(project: Project) -> list[str]:
    """Files that an earlier lock (this one's orphaned entries, or any in git history) names as
    an output, still holding exactly those bytes, and that the manifest no longer uses. A file
    whose bytes flexforge never recorded there is not flexforge's to delete."""
    manifest = project.manifest
    in_use = {a.out for a in manifest.assets.values() if a.written}
    in_use |= {r for a in manifest.assets.values() for r in a.references if r not in a.asset_refs}
    made: dict[str, set[str]] = {}
    for asset_id, entry in project.lock.entries.items():
        asset = manifest.assets.get(asset_id)
        # An orphan's file, or a candidate's written while `variants_dir` was set and kept in
        # the cache only since then.
        if asset is None or not asset.written:
            made.setdefault(entry.out, set()).add(entry.sha256)
    sources = project.sources()
    history = sources.history
    if history is not None:
        for rows in history.index().values():
            for row in rows:
                made.setdefault(str(row[2]), set()).add(str(row[0]))
        history.close()
    # Another manifest in the folder may write it now (an asset moved there): not an orphan.
    beside = sibling_outputs(manifest.path)
    # Compared as paths, not strings: a lock may spell a file in use another way (`a//b.png`,
    # `./b.png`, another case on macOS), and that file is still in use.
    in_use = {folded_path(out) for out in in_use}
    found = []
    for out, shas in sorted(made.items()):
        folded = folded_path(out)
        if folded in in_use or folded in beside or not _image_name(out):
            continue
        # Inside the project and reached through no link: a committed link may lead anywhere.
        if sources.in_tree(out) and project.store.digest(out) in shas:
            found.append(out)
    return found


def _image_name(out: str) -> bool:
    """Whether `out` is named as flexforge names its outputs (an image extension): a lock can
    claim any file (an old one in a hostile history: the manifest, a README), gc deletes images
    only."""
    return any(extension_problem(out, fmt) is None for fmt in EXTENSIONS)


def _unneeded_objects(project: Project, recent_days: float) -> list[Path]:
    """Cached images that no lock entry names and no build made or used recently."""
    needed = {e.sha256 for e in project.lock.entries.values()}
    cutoff = time.time() - recent_days * 86400
    keys = project.store.dir / "keys"
    for record_file in _files(keys):
        if record_file.stat(follow_symlinks=False).st_mtime >= cutoff:
            record = project.store.key_record(record_file.stem)
            if record is not None:
                needed.add(record.sha256)
    objects = project.store.dir / "objects"
    return [p for folder in _folders(objects) for p in _files(folder) if p.name not in needed]


def _folders(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _files(path: Path) -> list[Path]:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if stat.S_ISREG(e.stat(follow_symlinks=False).st_mode))


def _show(garbage: Garbage, *, yes: bool) -> None:
    if garbage.empty:
        click.echo("Nothing to collect.")
        return
    verb = "deleting" if yes else "would delete"
    for out in garbage.outputs:
        click.echo(f"  orphaned output  {out}")
    size = sum(p.stat().st_size for p in garbage.objects) / 1e6
    click.echo(
        f"{verb}: {plural(len(garbage.outputs), 'orphaned output')}, "
        f"{plural(len(garbage.objects), 'cached object')} ({size:.1f} MB), "
        f"{plural(len(garbage.journal), 'finished journal entry', 'finished journal entries')}"
        + ("" if yes else "; run `flexforge gc --yes` to delete them")
    )


def _delete(project: Project, garbage: Garbage) -> None:
    for out in garbage.outputs:
        (project.manifest.root / out).unlink(missing_ok=True)
    for path in garbage.objects:
        path.unlink(missing_ok=True)
    for key in garbage.journal:
        project.store.journal_remove(key)
