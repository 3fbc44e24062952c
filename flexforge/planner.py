"""Deciding what each asset needs: create, regenerate, restore, drifted or none — and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flexforge.errors import UsageError
from flexforge.keys import ContentKey, changed, content_key, known_parts
from flexforge.lockfile import Lock, LockEntry
from flexforge.manifest import Asset, Manifest
from flexforge.options import PlanOptions
from flexforge.store import KeyRecord, Store

CREATE, REGENERATE, RESTORE, DRIFTED, NONE = "create", "regenerate", "restore", "drifted", "none"
# The output path holds something flexforge cannot read or replace (a folder, a FIFO, a file it
# may not read): nothing is done for the asset, and the reason says what to move away.
BLOCKED = "blocked"
GENERATES = (CREATE, REGENERATE)


@dataclass(slots=True)
class Step:
    asset: Asset
    action: str
    reasons: list[str]
    seed: int | None  # None: to be drawn when the asset is generated
    key: ContentKey | None  # None while an upstream output is still to be made
    reference_digests: list[str] | None
    output_sha256: str | None  # the output's digest after this step, when known now
    cached: KeyRecord | None = None  # the object-cache record a restore copies from
    estimated_cost_usd: float = 0.0


@dataclass(slots=True)
class Plan:
    manifest: Manifest
    provider: str
    generator: str
    steps: list[Step]
    orphaned: list[str] = field(default_factory=list)

    @property
    def estimated_cost_usd(self) -> float:
        return round(sum(s.estimated_cost_usd for s in self.steps), 6)

    @property
    def has_changes(self) -> bool:
        return bool(self.orphaned) or any(s.action != NONE for s in self.steps)

    def count(self, *actions: str) -> int:
        return sum(1 for s in self.steps if s.action in actions)


def select(manifest: Manifest, targets: Iterable[str]) -> list[str]:
    """The targets and everything they need, in build order; all assets when no targets."""
    wanted = list(targets)
    if not wanted:
        return list(manifest.assets)
    unknown = [t for t in wanted if t not in manifest.assets]
    if unknown:
        raise UsageError(f"unknown asset id: {', '.join(unknown)}")
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        asset_id = stack.pop()
        if asset_id not in needed:
            needed.add(asset_id)
            stack.extend(manifest.assets[asset_id].asset_refs)
    return [a for a in manifest.assets if a in needed]


def check_options(manifest: Manifest, options: PlanOptions) -> None:
    for flag, ids in (("--replace", options.replace), ("--reseed", options.reseed)):
        unknown = sorted(i for i in ids if i not in manifest.assets)
        if unknown:
            raise UsageError(f"{flag}: unknown asset id: {', '.join(unknown)}")
    for asset_id in sorted(options.reseed):
        seed = manifest.assets[asset_id].seed
        if seed is not None:
            raise UsageError(
                f"--reseed {asset_id}: its seed is set in the manifest ({seed}); change it there"
            )


def resolve_seed(
    asset: Asset, entry: LockEntry | None, reseed: bool, pinned: int | None = None
) -> int | None:
    """The manifest's seed, else the lock's, else one drawn by an earlier run that did not finish
    (`pinned`: reusing it is what lets that run's journaled task be found again)."""
    if asset.seed is not None:
        return asset.seed
    if reseed:
        # A reseed whose build was interrupted already drew a seed, maybe paid for it: keep it.
        return pinned if pinned is not None and (entry is None or pinned != entry.seed) else None
    if entry is not None:
        return entry.seed
    return pinned


def decide(
    asset: Asset,
    entry: LockEntry | None,
    store: Store,
    generator: str,
    seed: int | None,
    reference_digests: list[str | None],
    *,
    replace: bool = False,
) -> Step:
    """The action for one asset given its inputs' digests (None: an input still to be made)."""
    try:
        current = store.digest(asset.out)
    except OSError as exc:
        return Step(asset, BLOCKED, [unusable_output(asset.out, exc)], seed, None, None, None)
    known = [d for d in reference_digests if d is not None]
    computable = seed is not None and len(known) == len(reference_digests)
    key = content_key(asset, generator, seed, known) if seed is not None and computable else None
    if entry is not None and current is not None and current != entry.sha256 and not replace:
        # Bytes made for this very key (a build killed before its lock write) are planned like any
        # output; any others are a hand edit, never overwritten: accept them or --replace.
        made = store.key_record(key.key) if key is not None else None
        if made is None or made.sha256 != current:
            return Step(asset, DRIFTED, [], seed, None, None, entry.sha256)
    if key is None:
        reasons = (
            changed(known_parts(asset, generator, seed, reference_digests), entry.parts) if entry else []
        )
        return Step(asset, REGENERATE if entry else CREATE, reasons, seed, None, None, None)
    if replace:
        return Step(asset, REGENERATE, ["replace"], seed, key, known, None)
    if entry is not None and entry.key == key.key:
        if current == entry.sha256:
            return Step(asset, NONE, [], seed, key, known, current)
        cached = store.key_record(key.key)
        if cached is None and store.has_object(entry.sha256):
            cached = KeyRecord(
                entry.sha256, entry.size, entry.provider, entry.seed, entry.task_id, entry.cost_usd
            )
        if cached is not None:
            return Step(asset, RESTORE, ["missing"], seed, key, known, cached.sha256, cached)
        return Step(asset, REGENERATE, ["missing"], seed, key, known, None)
    reasons = key.changed_parts(entry.parts) if entry is not None else []
    cached = store.key_record(key.key)
    if cached is not None:
        return Step(asset, RESTORE, reasons, seed, key, known, cached.sha256, cached)
    return Step(asset, REGENERATE if entry else CREATE, reasons, seed, key, known, None)


def unusable_output(out: str, exc: OSError) -> str:
    """Why the file at `out` cannot be read or replaced, and what to do, in one line."""
    from flexforge.errors import clip

    shown = clip(out, 120)
    reason = exc.strerror or type(exc).__name__
    if reason.startswith("is "):  # fsutil.NotRegularFile: "is a folder, not a file"
        return f"{shown} {reason}; move it away so flexforge can write the image there"
    return f"cannot read {shown} ({reason}); fix its permissions or move it away"


def reference_digests(asset: Asset, store: Store, outputs: dict[str, str | None]) -> list[str | None]:
    """Digest of each reference: a file's bytes, or an upstream asset's output after its step."""
    digests: list[str | None] = []
    for ref in asset.references:
        if ref in asset.asset_refs:
            digests.append(outputs.get(ref))
        else:
            digests.append(store.digest(ref))
    return digests


def make_plan(
    manifest: Manifest,
    lock: Lock,
    store: Store,
    provider: str,
    generator: str,
    options: PlanOptions,
) -> Plan:
    check_options(manifest, options)
    selected = select(manifest, options.targets)
    outputs: dict[str, str | None] = {}
    pinned = store.pinned_seeds()
    steps = []
    for asset_id in selected:
        asset = manifest.assets[asset_id]
        entry = lock.entries.get(asset_id)
        seed = resolve_seed(asset, entry, asset_id in options.reseed, pinned.get(asset_id))
        digests = reference_digests(asset, store, outputs)
        step = decide(asset, entry, store, generator, seed, digests, replace=asset_id in options.replace)
        outputs[asset_id] = step.output_sha256
        steps.append(step)
    if generator != "draft":
        _estimate(steps, manifest, store)
    orphaned = sorted(set(lock.entries) - set(manifest.assets))
    return Plan(manifest, provider, generator, steps, orphaned)


def _estimate(steps: list[Step], manifest: Manifest, store: Store) -> None:
    from flexforge.pricing import estimate_usd

    for step in steps:
        if step.action in GENERATES:
            sizes = [_reference_size(ref, manifest) for ref in step.asset.references]
            step.estimated_cost_usd = estimate_usd(
                step.asset.model, step.asset.width, step.asset.height, [s for s in sizes if s]
            )


def _reference_size(ref: str, manifest: Manifest) -> tuple[int, int] | None:
    upstream = manifest.assets.get(ref)
    if upstream is not None:
        return upstream.width, upstream.height
    from PIL import Image

    try:
        with Image.open(manifest.root / ref) as img:
            return img.size
    except Exception:  # an unreadable reference fails later, with its own message
        return None
