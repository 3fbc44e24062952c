"""`flexforge diff [REV [REV]]`: what changed between two commits, or a commit and the working tree.

Per asset: added, removed, regenerated, renamed, restored or edited; the key parts that changed,
the cost, and a perceptual distance between before and after. Images come from git history, the
working tree or the object cache, never from the API. Text by default, `--json` for machines (the
shape is in docs/review-json.md), `--html DIR` for a page with the pictures side by side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from flexforge import __version__
from flexforge.confine import Resolver
from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK, UsageError
from flexforge.gitrev import GitRevisions
from flexforge.imagesource import MAX_IMAGE_BYTES, ImageSources, MissingImage, confined, read_bounded
from flexforge.lockfile import Lock, parse_lock, read_lock
from flexforge.paths import STATE_DIR
from flexforge.report import (
    CHANGES,
    UNCHANGED,
    Diff,
    DiffAsset,
    Revision,
    State,
    Written,
    compare,
)
from flexforge.store import Store
from flexforge.thumbs import DerivedImageError, Thumbs, distance, require_imagehash

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a lock or manifest larger than this is not one
MARKS = {"added": "+", "removed": "-", "regenerated": "~", "renamed": ">", "restored": "<", "edited": "!"}
_VAR = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def diff(opts: GlobalOptions, revs: tuple[str, ...], html: Path | None, as_json: bool) -> int:
    if len(revs) > 2:
        raise UsageError("diff takes at most two revisions: flexforge diff [BASE [HEAD]]")
    require_imagehash()  # before any work: the `review` extra may not be installed
    manifest = opts.manifest_path()
    root = manifest.parent
    store = Store(root / STATE_DIR)
    with GitRevisions(root, manifest.with_suffix(".lock")) as git:
        if revs:
            base_rev, base_label = git.commit(revs[0]), revs[0]
        else:
            base_rev, base_label = git.default_base()
        base = _state_at(git, base_rev, base_label, manifest)
        head = (
            _state_at(git, git.commit(revs[1]), revs[1], manifest) if len(revs) == 2 else _worktree(manifest)
        )
        known = _known_keys(git, base_rev, manifest.with_suffix(".lock").name)
        model = compare(base, head, known)
        sources = _sources(git, root, store, base, head)
        thumbs = Thumbs(store.cache_dir / "thumbs")
        _measure(model, sources, thumbs)
        if html is not None:
            index = _write_site(model, sources, thumbs, html, root.name)
            if not as_json and not opts.quiet:
                click.echo(f"Diff page: {index.resolve().as_uri()}")
    if as_json:
        click.echo(json.dumps(model.to_json(), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print_diff(model, opts)
    return EXIT_OK


# -- the two sides --------------------------------------------------------------------------------


def _state_at(git: GitRevisions, commit: str, label: str, manifest: Path) -> State:
    lock_name = manifest.with_suffix(".lock").name
    raw = git.read(commit, lock_name, MAX_TEXT_BYTES)
    where = f"{lock_name} at {label} ({commit[:12]})"
    lock = (
        Lock(manifest.with_suffix(".lock"))
        if raw is None
        else parse_lock(manifest.with_suffix(".lock"), raw, where, fix="diff cannot compare that revision")
    )
    written = _written(git.read(commit, manifest.name, MAX_TEXT_BYTES))
    return State(Revision(commit, label), lock.entries, written)


def _worktree(manifest: Path) -> State:
    lock = read_lock(manifest.with_suffix(".lock"))
    try:
        raw: bytes | None = manifest.read_bytes()[: MAX_TEXT_BYTES + 1]
    except OSError:
        raw = None
    return State(Revision(None, "working tree"), lock.entries, _written(raw))


def _written(raw: bytes | None) -> dict[str, Written]:
    """Prompts and tags as the manifest wrote them, vars filled in; {} when it cannot be read (a
    diff still compares the locks)."""
    if raw is None or len(raw) > MAX_TEXT_BYTES:
        return {}
    from flexforge.yamlsource import parse_yaml

    doc = parse_yaml(raw)
    data = doc.data if isinstance(doc.data, dict) and not doc.problems else {}
    variables = (
        {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
        if isinstance(data.get("vars"), dict)
        else {}
    )
    assets = data.get("assets")
    if not isinstance(assets, dict):
        return {}
    written = {}
    for asset_id, body in assets.items():
        if not isinstance(body, dict):
            continue
        tags = body.get("tags")
        prompt = body.get("prompt")
        written[str(asset_id)] = Written(
            _fill(prompt, variables) if isinstance(prompt, str | dict) else None,
            [str(t) for t in tags] if isinstance(tags, list) else [],
        )
    return written


def _fill(node: Any, variables: dict[str, str]) -> Any:
    """`{name}` replaced from vars for display; an unknown name is left as written."""
    if isinstance(node, str):

        def one(m: re.Match[str]) -> str:
            token = m.group(0)
            return {"{{": "{", "}}": "}"}.get(token) or variables.get(m.group(1), token)

        return _VAR.sub(one, node)
    if isinstance(node, dict):
        return {str(k): _fill(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, variables) for v in node]
    return node


def _known_keys(git: GitRevisions, base: str, lock_name: str) -> set[str]:
    """Keys recorded by the lock in the base commit and the commits before it."""
    keys: set[str] = set()
    for commit in git.changed_in(base, lock_name):
        raw = git.read(commit, lock_name, MAX_TEXT_BYTES)
        try:
            doc = json.loads(raw) if raw is not None else {}
            keys.update(str(body["key"]) for body in doc["assets"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a broken lock in history only means fewer restores recognised
    return keys


# -- images ---------------------------------------------------------------------------------------


def _sources(git: GitRevisions, root: Path, store: Store, base: State, head: State) -> ImageSources:
    """Where each side's images may be: that commit's blob at the output path, the working tree
    file at that path, the object cache, another commit that recorded them; every read is
    checked against the lock's sha256, and tried in that order only until one matches."""
    sources = ImageSources(store)
    resolver = Resolver(root)
    for state in (base, head):
        commit = state.revision.rev
        for entry in state.entries.values():
            if commit is not None:
                sources.add_reader(entry.sha256, _blob_reader(git, commit, entry.out))
            sources.add_reader(entry.sha256, _worktree_reader(resolver, entry.out))
            sources.add_fallback(entry.sha256, _history_reader(git, entry.key, entry.sha256))
    return sources


def _history_reader(git: GitRevisions, key: str, sha256: str) -> Callable[[], bytes | None]:
    """Any other commit whose lock recorded these bytes for this key (the git-history object
    store): the last resort, when the revision's own tree lacks the file."""

    def read() -> bytes | None:
        if git.history is None:
            return None
        for source in git.history.lookup(key):
            if source.sha256 == sha256 and source.commit and source.path:
                data = git.read(source.commit, source.path, MAX_IMAGE_BYTES)
                if data is not None:
                    return data
        return None

    return read


def _worktree_reader(resolver: Resolver, out: str) -> Callable[[], bytes | None]:
    """The working-tree file at `out`, confined when it is first read: a diff of 1,000 assets
    reads the images of the changed few."""

    def read() -> bytes | None:
        path = confined(resolver, out)
        return read_bounded(path) if path is not None else None

    return read


def _blob_reader(git: GitRevisions, commit: str, out: str) -> Callable[[], bytes | None]:
    return lambda: git.read(commit, out, MAX_IMAGE_BYTES)


def _measure(model: Diff, sources: ImageSources, thumbs: Thumbs) -> None:
    """Look up each changed asset's images and their perceptual distance."""
    hashes: dict[str, str | None] = {}

    def phash(sha: str) -> str | None:
        if sha not in hashes:
            try:
                hashes[sha] = thumbs.phash(sha, sources.loader(sha))
            except (MissingImage, DerivedImageError):
                hashes[sha] = None
        return hashes[sha]

    for row in model.changed:
        for side in (row.before, row.after):
            if side is not None:
                side.image = phash(side.sha256) is not None
        if row.before and row.after and row.before.image and row.after.image:
            a, b = phash(row.before.sha256), phash(row.after.sha256)
            assert a is not None and b is not None
            row.distance = distance(a, b)


def _write_site(model: Diff, sources: ImageSources, thumbs: Thumbs, out: Path, title: str) -> Path:
    from flexforge.render import Site, SiteImage

    site = Site(out, thumbs)
    images: dict[str, SiteImage] = {}
    heatmaps: dict[str, str] = {}
    for row in model.changed:
        for side in (row.before, row.after):
            if side is not None and side.image and side.sha256 not in images:
                picture = site.image(side.sha256, sources.loader(side.sha256))
                if picture is not None:
                    images[side.sha256] = picture
        before, after = row.before, row.after
        if before and after and before.image and after.image and before.sha256 != after.sha256:
            a, b = before.sha256, after.sha256
            heat = site.heatmap(a, b, sources.loader(a), sources.loader(b))
            if heat is not None:
                heatmaps[row.id] = heat
    changed = model.changed
    facets = {
        "status": [c for c in CHANGES if any(r.change == c for r in changed)],
        "model": sorted({_side(r).model for r in changed}),
        "tag": sorted({t for r in changed for t in _side(r).tags}),
    }
    index = site.page(
        "diff.html.j2",
        diff=model,
        images=images,
        heatmaps=heatmaps,
        tags={r.id: _side(r).tags for r in changed},
        facets=facets,
        changes=[c for c in CHANGES if c != UNCHANGED],
        title=title,
        flexforge_version=__version__,
    )
    site.finish()
    return index


def _side(row: DiffAsset) -> Any:
    return row.after or row.before


# -- text -----------------------------------------------------------------------------------------


def print_diff(model: Diff, opts: GlobalOptions) -> None:
    head = model.head.label if model.head.rev is None else f"{model.head.label} ({model.head.rev[:12]})"
    base = f"{model.base.label} ({(model.base.rev or '')[:12]})"
    if not opts.quiet:
        click.echo(f"{base} -> {head}")
    rows = model.changed
    width = max((len(r.id) for r in rows), default=0)
    for row in rows:
        what = row.change + (
            f" from {row.previous_id}" if row.previous_id and row.previous_id != row.id else ""
        )
        parts = f" ({', '.join(row.changed_parts)})" if row.changed_parts else ""
        dist = f"  distance {row.distance}/64" if row.distance is not None else ""
        if row.change != "removed" and row.after and row.after.image is False:
            dist = "  (image not found)"
        cost = f"  ${row.cost_usd:.4f}" if row.cost_usd else ""
        click.echo(f"  {MARKS[row.change]} {row.id:<{width}}  {what}{parts}{dist}{cost}")
    counts = [f"{model.summary[c]} {c}" for c in CHANGES if c != UNCHANGED and model.summary[c]]
    if not opts.quiet:
        changed = ", ".join(counts) if counts else "no changes"
        click.echo(
            f"Diff: {changed}; {model.summary[UNCHANGED]} unchanged; cost ${model.summary['cost_usd']:.2f}."
        )
