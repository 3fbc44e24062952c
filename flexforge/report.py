"""The review data model: what the gallery, the diff page and the pull-request comment show.

One shape, documented in docs/review-json.md and versioned by REPORT_VERSION: fields are only ever
added within a version. The pages render it and `flexforge diff --json` prints it, so a consumer
(the GitHub action's comment) sees exactly what a reviewer sees. Images are named by sha256 only;
where their bytes come from is `imagesource`'s job and where the site puts them is `render`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from flexforge.keys import PARTS, request_params
from flexforge.lockfile import Lock, LockEntry
from flexforge.manifest import Asset
from flexforge.planner import Plan

REPORT_VERSION = 1
ORPHANED = "orphaned"
# Kinds of change in a diff, in the order pages list them.
ADDED, REMOVED, REGENERATED, RENAMED, RESTORED, EDITED, UNCHANGED = (
    "added",
    "removed",
    "regenerated",
    "renamed",
    "restored",
    "edited",  # same key, other bytes: a hand edit adopted with `flexforge accept`
    "unchanged",
)
CHANGES = (ADDED, REGENERATED, RESTORED, EDITED, RENAMED, REMOVED, UNCHANGED)


@dataclass(slots=True)
class Variant:
    """One candidate image of an asset: a `variants:` asset has several, any other one, selected."""

    sha256: str
    seed: int | None
    selected: bool


@dataclass(slots=True)
class Reference:
    ref: str
    kind: str  # "asset" (that asset's output) or "file" (under the project root)


@dataclass(slots=True)
class GalleryAsset:
    id: str
    status: str  # a plan action (create, regenerate, restore, drifted, none) or "orphaned"
    reasons: list[str]
    out: str
    image: str | None  # sha256 of the picture shown (the file on disk, else the lock's cached one)
    lock_sha256: str | None
    prompt: str
    structured: dict[str, Any] | None
    params: dict[str, Any]
    seed: int | None
    model: str
    generator: str | None
    provider: str | None
    cost_usd: float | None
    estimated_cost_usd: float
    references: list[Reference]
    dependents: list[str]
    tags: list[str]
    variants: list[Variant]
    matrix: str | None = None  # the matrix (its templated id) that declared it; None if by hand
    cell: dict[str, str] = field(default_factory=dict)  # its axis values in that matrix


@dataclass(slots=True)
class Gallery:
    assets: list[GalleryAsset]
    provider: str
    total_cost_usd: float
    estimated_cost_usd: float
    kind: str = "gallery"
    version: int = REPORT_VERSION

    def to_json(self) -> dict[str, Any]:
        return _head_first(asdict(self))

    def facets(self) -> dict[str, list[str]]:
        """The values each filter offers, in a stable order."""
        axes: dict[str, set[str]] = {}
        for a in self.assets:
            for axis, value in a.cell.items():
                axes.setdefault(axis, set()).add(value)
        return {
            "status": sorted({a.status for a in self.assets}),
            "model": sorted({a.model for a in self.assets}),
            "tag": sorted({t for a in self.assets for t in a.tags}),
            "matrix": sorted({a.matrix for a in self.assets if a.matrix}),
            **{f"axis:{axis}": sorted(values) for axis, values in sorted(axes.items())},
        }

    def axes(self) -> list[str]:
        """The matrix axes the assets' cells name, sorted: one filter and grouping each."""
        return sorted({axis for a in self.assets for axis in a.cell})


@dataclass(slots=True)
class Side:
    """An asset as one revision's lock (and manifest) recorded it."""

    id: str
    out: str
    sha256: str
    key: str
    parts: dict[str, str]
    seed: int
    model: str
    generator: str
    provider: str
    task_id: str | None
    cost_usd: float | None
    prompt: str | None  # as written in that revision's manifest; None when it cannot be read
    tags: list[str]
    structured: dict[str, Any] | None
    image: bool | None  # its bytes were found (git, working tree, cache); None: not looked up

    @classmethod
    def of(cls, asset_id: str, entry: LockEntry, written: Written | None) -> Side:
        prompt = written.prompt if written else None
        return cls(
            id=asset_id,
            out=entry.out,
            sha256=entry.sha256,
            key=entry.key,
            parts=dict(entry.parts),
            seed=entry.seed,
            model=entry.model,
            generator=entry.generator,
            provider=entry.provider,
            task_id=entry.task_id,
            cost_usd=entry.cost_usd,
            prompt=prompt if isinstance(prompt, str) else None,
            structured=prompt if isinstance(prompt, dict) else None,
            tags=list(written.tags) if written else [],
            image=None,
        )


@dataclass(slots=True)
class Written:
    """An asset as a revision's manifest wrote it (vars filled in): for showing, never for keys."""

    prompt: str | dict[str, Any] | None
    tags: list[str]


@dataclass(slots=True)
class DiffAsset:
    id: str
    change: str  # one of CHANGES
    previous_id: str | None  # for a rename: the id before
    changed_parts: list[str]  # key parts that differ (keys.PARTS order), plus "out" when it moved
    distance: int | None  # perceptual distance 0..64 (imagehash.phash), when both images are there
    cost_usd: float  # what this change cost: the API's reported cost of a new generation, else 0
    before: Side | None
    after: Side | None


@dataclass(slots=True)
class Revision:
    rev: str | None  # full commit id; None for the working tree
    label: str  # as the user named it, e.g. "merge-base of HEAD and main" or "working tree"


@dataclass(slots=True)
class Diff:
    base: Revision
    head: Revision
    assets: list[DiffAsset]
    summary: dict[str, Any] = field(default_factory=dict)
    kind: str = "diff"
    version: int = REPORT_VERSION

    def __post_init__(self) -> None:
        if not self.summary:
            counts = {c: sum(1 for a in self.assets if a.change == c) for c in CHANGES}
            cost = round(sum(a.cost_usd for a in self.assets), 6)
            self.summary = {**counts, "cost_usd": cost}

    @property
    def changed(self) -> list[DiffAsset]:
        return [a for a in self.assets if a.change != UNCHANGED]

    def to_json(self) -> dict[str, Any]:
        return _head_first(asdict(self))


def _head_first(doc: dict[str, Any]) -> dict[str, Any]:
    """`kind` and `version` first, so a reader (or a person) knows the shape before the data."""
    return {"kind": doc.pop("kind"), "version": doc.pop("version"), **doc}


# -- building a gallery from a project's plan ---------------------------------------------------


def gallery_assets(plan: Plan, lock: Lock, shown: dict[str, str | None]) -> list[GalleryAsset]:
    """One card per planned asset, then one per orphaned lock entry. `shown` maps an asset id to
    the sha256 of the picture to show (None: nothing to show yet)."""
    manifest = plan.manifest
    dependents: dict[str, list[str]] = {asset_id: [] for asset_id in manifest.assets}
    for asset in manifest.assets.values():
        for ref in asset.asset_refs:
            dependents[ref].append(asset.id)
    cards = []
    for step in plan.steps:
        asset = step.asset
        entry = lock.entries.get(asset.id)
        cards.append(
            _card(asset, entry, step.action, step.reasons, step.seed, shown.get(asset.id), dependents)
        )
        cards[-1].estimated_cost_usd = step.estimated_cost_usd
        if asset.rendition is not None and "select" in asset.rendition:
            cards[-1].variants = _candidates(asset, lock, step.seed)
    by_id = {card.id: card for card in cards}
    for card in cards:  # a matrix cell's candidates are in its cell too
        if len(card.variants) > 1 and card.matrix is not None:
            for ref in manifest.assets[card.id].asset_refs:
                if ref in by_id and by_id[ref].matrix is None:
                    by_id[ref].matrix, by_id[ref].cell = card.matrix, dict(card.cell)
    for orphan in plan.orphaned:
        entry = lock.entries[orphan]
        cards.append(_orphan_card(orphan, entry, shown.get(orphan)))
    return cards


def _candidates(asset: Asset, lock: Lock, pick: int | None) -> list[Variant]:
    """A `variants:` asset's candidates the lock knows, the picked one selected."""
    found = []
    for k, ref in enumerate(asset.references, start=1):
        entry = lock.entries.get(ref)
        if entry is not None:
            found.append(Variant(entry.sha256, entry.seed, k == pick))
    return found


def _card(
    asset: Asset,
    entry: LockEntry | None,
    action: str,
    reasons: list[str],
    seed: int | None,
    image: str | None,
    dependents: dict[str, list[str]],
) -> GalleryAsset:
    tags = list(asset.tags)
    matrix, cell = matrix_cell(asset.origin)
    return GalleryAsset(
        id=asset.id,
        status=action,
        reasons=list(reasons),
        out=asset.out,
        image=image,
        lock_sha256=entry.sha256 if entry else None,
        prompt=asset.prompt,
        structured=asset.structured,
        params=request_params(asset),
        seed=seed,
        model=asset.model,
        generator=entry.generator if entry else None,
        provider=entry.provider if entry else None,
        cost_usd=entry.cost_usd if entry else None,
        estimated_cost_usd=0.0,
        references=[Reference(r, "asset" if r in asset.asset_refs else "file") for r in asset.references],
        dependents=dependents.get(asset.id, []),
        tags=tags,
        variants=[Variant(image, seed, True)] if image else [],
        matrix=matrix,
        cell=cell,
    )


def matrix_cell(origin: str | None) -> tuple[str | None, dict[str, str]]:
    """Asset.origin ("post-{product}-{channel} product=midnight channel=open-graph") as the
    matrix's templated id and its cell's axis values. Neither ids nor values hold spaces or '='."""
    if not origin:
        return None, {}
    template, *pairs = origin.split(" ")
    return template, dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def _orphan_card(asset_id: str, entry: LockEntry, image: str | None) -> GalleryAsset:
    return GalleryAsset(
        id=asset_id,
        status=ORPHANED,
        reasons=[],
        out=entry.out,
        image=image,
        lock_sha256=entry.sha256,
        prompt="",
        structured=None,
        params={},
        seed=entry.seed,
        model=entry.model,
        generator=entry.generator,
        provider=entry.provider,
        cost_usd=entry.cost_usd,
        estimated_cost_usd=0.0,
        references=[],
        dependents=[],
        tags=[],
        variants=[Variant(image, entry.seed, True)] if image else [],
    )


def changed_parts(before: LockEntry, after: LockEntry) -> list[str]:
    parts = [p for p in PARTS if before.parts.get(p) != after.parts.get(p)]
    if before.out != after.out:
        parts.append("out")
    return parts


# -- comparing two revisions' locks -------------------------------------------------------------


@dataclass(slots=True)
class State:
    """One side of a diff: a lock's entries, and its assets as that revision's manifest wrote them."""

    revision: Revision
    entries: dict[str, LockEntry]
    written: dict[str, Written]


def compare(base: State, head: State, known_keys: set[str]) -> Diff:
    """What changed from `base` to `head`, asset by asset. `known_keys` are the keys recorded by
    locks up to the base: an image whose key is among them was restored, not paid for again."""

    def side(state: State, asset_id: str) -> Side:
        return Side.of(asset_id, state.entries[asset_id], state.written.get(asset_id))

    rows: list[DiffAsset] = []
    for asset_id in sorted(base.entries.keys() & head.entries.keys()):
        old, new = base.entries[asset_id], head.entries[asset_id]
        change, parts = _change(old, new, known_keys)
        cost = (new.cost_usd or 0.0) if change == REGENERATED else 0.0
        rows.append(
            DiffAsset(asset_id, change, None, parts, None, cost, side(base, asset_id), side(head, asset_id))
        )
    gone = sorted(base.entries.keys() - head.entries.keys())
    for asset_id in sorted(head.entries.keys() - base.entries.keys()):
        new = head.entries[asset_id]
        previous = _renamed_from(new, gone, base.entries)
        if previous is not None:
            gone.remove(previous)
            parts = changed_parts(base.entries[previous], new)
            rows.append(
                DiffAsset(
                    asset_id, RENAMED, previous, parts, None, 0.0, side(base, previous), side(head, asset_id)
                )
            )
            continue
        restored = new.key in known_keys
        cost = 0.0 if restored else (new.cost_usd or 0.0)
        change = RESTORED if restored else ADDED
        rows.append(DiffAsset(asset_id, change, None, [], None, cost, None, side(head, asset_id)))
    rows += [DiffAsset(i, REMOVED, None, [], None, 0.0, side(base, i), None) for i in gone]
    rows.sort(key=lambda r: (CHANGES.index(r.change), r.id))
    return Diff(base.revision, head.revision, rows)


def _change(old: LockEntry, new: LockEntry, known_keys: set[str]) -> tuple[str, list[str]]:
    parts = changed_parts(old, new)
    if old.sha256 == new.sha256:
        return (RENAMED if "out" in parts else UNCHANGED), parts
    if old.key == new.key:
        return EDITED, parts
    return (RESTORED if new.key in known_keys else REGENERATED), parts


def _renamed_from(new: LockEntry, gone: list[str], before: dict[str, LockEntry]) -> str | None:
    """The removed asset this new one is (same key, else same bytes): a rename keeps its image."""
    for asset_id in gone:
        if before[asset_id].key == new.key:
            return asset_id
    for asset_id in gone:
        if before[asset_id].sha256 == new.sha256:
            return asset_id
    return None
