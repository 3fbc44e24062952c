"""Deciding what each asset needs now — create, regenerate, restore, rename, drifted, conflict or
none — and why: the one place plan, build, accept and explain ask."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flexforge.errors import UsageError
from flexforge.keys import ContentKey, changed, content_key, known_parts
from flexforge.lockfile import Lock, LockEntry
from flexforge.manifest import Asset, Manifest
from flexforge.options import PlanOptions
from flexforge.rendition import RENDITION
from flexforge.sources import CACHE, GIT, IN_PLACE, Current, Nowhere, Source, Sources
from flexforge.store import Store

CREATE, REGENERATE, RESTORE, RENAME = "create", "regenerate", "restore", "rename"
DRIFTED, CONFLICT, NONE = "drifted", "conflict", "none"
# The output path holds something flexforge cannot read or replace (a folder, a FIFO, a file it
# may not read): nothing is done for the asset, and the reason says what to move away.
BLOCKED = "blocked"
GENERATES = (CREATE, REGENERATE)
RESTORES = (RESTORE, RENAME)
RESUME = "resume: already paid"  # a reason: the journaled task is polled, not submitted again
LFS_REASON = "a Git LFS pointer, not the image: run `git lfs pull`"
STALE = "an older image of it in place"  # a reason: what a committed lock recorded there before
INTERRUPTED = "interrupted restore"  # a reason: a build was killed while writing it in place
HELD = (DRIFTED, CONFLICT)  # outputs flexforge found but does not own: a build leaves them


@dataclass(slots=True, kw_only=True)
class Step:
    asset: Asset
    action: str
    reasons: list[str] = field(default_factory=list)
    seed: int | None = None  # None: to be drawn when the asset is generated
    key: ContentKey | None = None  # None while an upstream output is still to be made
    reference_digests: list[str | None] | None = None
    output_sha256: str | None = None  # the output's digest after this step, when known now
    source: Source | None = None  # where a restore or rename copies its bytes from
    estimated_cost_usd: float = 0.0

    @property
    def detail(self) -> str:
        """The parenthesised part of `plan`'s line: the source of a restore, else the reasons."""
        if self.action == RESTORE and self.source is not None:
            return self.source.label
        return ", ".join(self.reasons)


@dataclass(slots=True)
class Facts:
    """What every step of one plan is decided from, besides the asset itself."""

    lock: Lock
    store: Store
    generator: str
    options: PlanOptions
    sources: Sources
    orphans: dict[str, LockEntry]
    pinned: dict[str, int]
    _by_request: dict[tuple[tuple[str, str], ...], list[str]] | None = None
    # Candidates kept in the cache whose bytes this plan needs and no source holds: made again.
    needed: set[str] = field(default_factory=set)
    # Outputs a killed build was writing in place (Store.interrupted_writes): flexforge's own
    # unfinished bytes, planned as if absent, never `drifted` or `conflict`.
    interrupted: frozenset[str] = frozenset()
    # Orphaned entry -> the new id that took its seed (_rename_of): two assets asking the same
    # thing, renamed together, must not both take one entry's seed and image.
    renamed: dict[str, str] = field(default_factory=dict)
    # Seedless manifest ids with no lock entry, by what they ask (_peer_key), in id order: which
    # of several equally likely old entries a new id takes is its rank here, the same whatever
    # the plan selects (`build ID`, `explain ID`).
    peers: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)

    def orphans_by_request(self) -> dict[tuple[tuple[str, str], ...], list[str]]:
        """Orphaned entries by their key parts, seed aside (see _rename_of)."""
        if self._by_request is None:
            self._by_request = {}
            for old_id, orphan in sorted(self.orphans.items()):
                self._by_request.setdefault(_seedless(orphan.parts), []).append(old_id)
        return self._by_request

    @classmethod
    def gather(
        cls,
        manifest: Manifest,
        lock: Lock,
        store: Store,
        generator: str,
        options: PlanOptions,
        sources: Sources | None = None,
    ) -> Facts:
        orphans = {k: e for k, e in lock.entries.items() if k not in manifest.assets}
        sources = sources if sources is not None else Sources(lock, store)
        facts = cls(lock, store, generator, options, sources, orphans, store.pinned_seeds())
        facts.interrupted = store.interrupted_writes()
        if orphans:
            for asset_id in sorted(manifest.assets):
                asset = manifest.assets[asset_id]
                if asset.seed is None and asset_id not in lock.entries:
                    facts.peers.setdefault(_peer_key(asset), []).append(asset_id)
        return facts


@dataclass(slots=True)
class Plan:
    manifest: Manifest
    provider: str
    generator: str
    steps: list[Step]
    orphaned: list[str]
    facts: Facts
    # Orphaned entry -> the new id of this plan that carries its seed (a rename): the build
    # drops that entry only once the new one is in the lock.
    claimed: dict[str, str] = field(default_factory=dict)

    @property
    def estimated_cost_usd(self) -> float:
        return round(sum(s.estimated_cost_usd for s in self.steps), 6)

    @property
    def has_changes(self) -> bool:
        return bool(self.orphaned) or any(s.action != NONE for s in self.steps)

    def count(self, *actions: str) -> int:
        return sum(1 for s in self.steps if s.action in actions)


def select(manifest: Manifest, targets: Iterable[str], tags: Iterable[str] = ()) -> list[str]:
    """The targets (ids or glob patterns of ids) and assets with any of `tags`, and everything
    they need, in build order; all assets when neither is given."""
    wanted = matching(manifest, targets, tags)
    if wanted is None:
        return list(manifest.assets)
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        asset_id = stack.pop()
        if asset_id not in needed:
            needed.add(asset_id)
            stack.extend(manifest.assets[asset_id].asset_refs)
    return [a for a in manifest.assets if a in needed]


def matching(manifest: Manifest, targets: Iterable[str], tags: Iterable[str] = ()) -> list[str] | None:
    """The ids that targets and tags name (None: no selection). A pattern or tag that selects
    nothing is an error, as a typo in an id is: an empty build must not pass for a done one."""
    import fnmatch

    patterns, tags = list(targets), list(tags)
    if not patterns and not tags:
        return None
    manifest.check_ids([p for p in patterns if not _is_glob(p)])
    wanted: list[str] = []
    for pattern in patterns:
        found = fnmatch.filter(manifest.assets, pattern) if _is_glob(pattern) else [pattern]
        if not found:
            raise UsageError(f"{pattern!r} matches no asset id in {manifest.label}")
        wanted += found
    for tag in tags:
        found = [a.id for a in manifest.assets.values() if tag in a.tags]
        if not found:
            known = sorted({t for a in manifest.assets.values() for t in a.tags})
            raise UsageError(f"--tag {tag}: no asset has this tag (tags: {', '.join(known) or 'none'})")
        wanted += found
    return list(dict.fromkeys(wanted))


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def check_options(manifest: Manifest, options: PlanOptions) -> None:
    for flag, ids in (("--replace", options.replace), ("--reseed", options.reseed)):
        manifest.check_ids(ids, flag)
    if options.targets or options.tags:
        # A reseed outside the selection would silently do nothing.
        outside = sorted(options.reseed - set(select(manifest, options.targets, options.tags)))
        if outside:
            raise UsageError(
                f"--reseed {', '.join(outside)}: not among the assets this build selects; "
                "add the id to the build's targets"
            )
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


def pick_of(asset: Asset, entry: LockEntry | None, options: PlanOptions) -> int:
    """The selected candidate of a `variants:` asset (1-based): the one `flexforge pick` asks
    for, else the lock's, else the first. A selection's lock `seed` is its pick."""
    count = int(asset.rendition["select"]) if asset.rendition else 1
    if asset.seed is not None:  # `pick:` in the manifest
        return asset.seed
    asked = dict(options.picks).get(asset.id)
    if asked is not None:
        return asked
    if entry is not None and 1 <= entry.seed <= count:
        return entry.seed
    return 1


def step_for(asset: Asset, facts: Facts, outputs: dict[str, str | None], seed: int | None = None) -> Step:
    """What `asset` needs now: the one answer plan, build, accept and explain all use. `outputs`
    holds the digest each upstream asset's output has after its own step; `seed` is one the
    build just drew."""
    entry = facts.lock.entries.get(asset.id)
    if seed is None and asset.rendition is not None and "select" in asset.rendition:
        seed = pick_of(asset, entry, facts.options)
    if seed is None:
        seed = resolve_seed(asset, entry, asset.id in facts.options.reseed, facts.pinned.get(asset.id))
    digests = reference_digests(asset, facts.store, outputs)
    return decide(asset, entry, facts, seed, digests)


def decide(
    asset: Asset,
    entry: LockEntry | None,
    facts: Facts,
    seed: int | None,
    digests: list[str | None],
) -> Step:
    """The action for one asset given its inputs' digests (None: an input still to be made).
    The key decides first: only an unchanged key can find its output `drifted`."""
    current = Current(facts.store, asset.out) if asset.written else Nowhere(facts.store)
    generator = generator_of(asset, facts.generator)
    known = [d for d in digests if d is not None]
    complete = len(known) == len(digests)
    renamed: str | None = None
    if entry is None and seed is None and complete and asset.id not in facts.options.reseed:
        renamed, seed = _rename_of(asset, facts, known)
        if seed is None:
            seed = _committed_seed(asset, facts, known, current)
    key = content_key(asset, generator, seed, known) if seed is not None and complete else None
    base: dict[str, Any] = {"asset": asset, "seed": seed, "key": key, "reference_digests": digests}
    unchanged = key is not None and entry is not None and entry.key == key.key and entry.out == asset.out
    if unchanged and asset.written and asset.id not in facts.options.replace:
        assert entry is not None
        if current.size == entry.size and current.matches(entry.sha256, entry.size):  # a plain file
            # Up to date, the one place that says so for a written output: its digest was read
            # (now, or under the stamp the stat cache holds), so it is readable and _unusable
            # need not ask; anything else at that path is not a plain file of the lock's size.
            return Step(action=NONE, output_sha256=entry.sha256, **base)
    unusable = _unusable(facts.store, asset.out, current)
    if unusable is not None:
        return Step(action=BLOCKED, reasons=[unusable], **{**base, "key": None})
    # Bytes a killed build left half written are nobody's edit: the file counts as absent.
    torn = asset.out in facts.interrupted
    present = current.exists and not torn
    if asset.id in facts.options.replace:
        return Step(action=REGENERATE, reasons=["replace"], **base)
    if key is None:
        if entry is None:
            if present:
                return Step(action=CONFLICT, output_sha256=current.digest, **base)
            return Step(action=CREATE, **base)
        reasons = changed(known_parts(asset, generator, seed, digests), entry.parts)
        return Step(action=REGENERATE, reasons=reasons, **base)
    if not asset.written and entry is not None and entry.key == key.key:
        # A candidate kept in the cache: the lock's record stands for it, on a fresh clone too;
        # its bytes are fetched only when something is made from them (a pick), and made again
        # only when that needs them and no source holds them (_lost_candidates).
        if asset.id in facts.needed:
            return Step(action=REGENERATE, reasons=["missing"], **base)
        return Step(action=NONE, output_sha256=entry.sha256, **base)
    source = facts.sources.find(key.key, asset.out, current)
    if entry is not None and entry.key == key.key:
        if present and (source is None or source.kind != IN_PLACE):
            if source is not None and facts.sources.committed_output(asset.out, current.digest):
                # An image flexforge made for an older lock of this project (committed, so git
                # keeps it), left in place when only the lock moved on: replaced, not "edited".
                return Step(
                    action=RESTORE, reasons=[STALE], output_sha256=source.sha256, source=source, **base
                )
            # Bytes nobody recorded for this key: a hand edit, never overwritten. Dependents are
            # planned from the lock's bytes until it is accepted. At a path the output was just
            # moved to, flexforge never wrote them (a designer's export already there): a conflict.
            held = DRIFTED if entry.out == asset.out else CONFLICT
            return Step(action=held, reasons=_lfs(facts, asset), output_sha256=entry.sha256, **base)
        if source is not None:
            return Step(
                action=RESTORE,
                reasons=[INTERRUPTED if torn else _absent(entry, asset)],
                output_sha256=source.sha256,
                source=source,
                **base,
            )
        return Step(action=REGENERATE, reasons=["missing"], **base)
    reasons = changed(key.parts, entry.parts) if entry is not None else []
    owned = entry is not None and entry.out == asset.out
    if present and not owned and (source is None or source.kind != IN_PLACE):
        # A file flexforge never made for this asset (an agency's image): never overwritten.
        return Step(action=CONFLICT, reasons=_lfs(facts, asset), output_sha256=current.digest, **base)
    if source is not None:
        origin = source.origin
        if entry is None and (renamed or (origin is not None and origin in facts.orphans)):
            return Step(
                action=RENAME,
                reasons=[f"from {renamed or origin}"],
                output_sha256=source.sha256,
                source=source,
                **base,
            )
        return Step(action=RESTORE, reasons=reasons, output_sha256=source.sha256, source=source, **base)
    return Step(action=REGENERATE if entry else CREATE, reasons=reasons, **base)


def generator_of(asset: Asset, generator: str) -> str:
    """What makes the asset's pixels: a rendition is made locally whatever the provider, so
    switching providers never remakes it."""
    return RENDITION if asset.rendition is not None else generator


def _lfs(facts: Facts, asset: Asset) -> list[str]:
    return [LFS_REASON] if facts.sources.lfs_pointer(asset.out) else []


def _absent(entry: LockEntry, asset: Asset) -> str:
    return "missing" if entry.out == asset.out else "moved"


def _rename_of(asset: Asset, facts: Facts, digests: list[str]) -> tuple[str | None, int | None]:
    """(old id, its pinned seed) when a new, seedless asset asks exactly what an orphaned entry
    was built for: a renamed id keeps its seed, and so its image. Orphans are found by their key
    parts, seed aside, so a thousand renames cost a thousand lookups, not a million keys."""
    generator = generator_of(asset, facts.generator)
    wanted = _seedless(known_parts(asset, generator, None, list(digests)))
    candidates = facts.orphans_by_request().get(wanted, [])
    if len(candidates) > 1:  # the same request under several ids: the likeliest old name first
        candidates = sorted(candidates, key=lambda old_id: -_affinity(old_id, asset.id))
        best = _affinity(candidates[0], asset.id)
        tied = [old_id for old_id in candidates if _affinity(old_id, asset.id) == best]
        if len(tied) > 1:  # nothing in the names tells: the new ids take them in id order
            peers = facts.peers.get(_peer_key(asset), [asset.id])
            turn = peers.index(asset.id) % len(tied) if asset.id in peers else 0
            candidates = [*tied[turn:], *tied[:turn], *candidates[len(tied) :]]
    for old_id in candidates:
        if facts.renamed.get(old_id, asset.id) != asset.id:
            continue  # another new id of this plan took it
        orphan = facts.orphans[old_id]
        if content_key(asset, generator, orphan.seed, digests).key == orphan.key:
            facts.renamed[old_id] = asset.id
            return old_id, orphan.seed
    return None, None


def _peer_key(asset: Asset) -> tuple[Any, ...]:
    """What tells apart new ids that may be renames of one request, short of its key (which
    needs the digests of its inputs): enough to rank them, the key still decides."""
    return (asset.model, asset.prompt, asset.width, asset.height, asset.references, asset.rendition is None)


def _affinity(old_id: str, new_id: str) -> int:
    """How much of two ids is kept by a rename: their common prefix and suffix (`hero-2` ->
    `banner-2`), so that which old entry a new id takes does not hang on what else is built."""

    def common(a: str, b: str) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    return min(common(old_id, new_id) + common(old_id[::-1], new_id[::-1]), len(old_id), len(new_id))


def _committed_seed(asset: Asset, facts: Facts, digests: list[str], current: Current) -> int | None:
    """The seed a committed lock pinned for exactly this request, when the working lock has no
    entry for the asset: the other side of a merge drew it (`git checkout --ours flexforge.lock`
    drops that entry, not the image), or the id was removed and added back. With it the asset
    keeps its key and image, free, instead of a `conflict` or a new draw."""
    generator = generator_of(asset, facts.generator)
    size = current.size
    in_place = current.digest if size is not None and size >= 0 else None
    for key, seed in facts.sources.committed_seeds(asset.id, in_place):
        if content_key(asset, generator, seed, digests).key == key:
            return seed
    return None


def _unusable(store: Store, rel: str, current: Current) -> str | None:
    """Why the output path cannot be read or replaced (a folder, a FIFO, a file this user may not
    read), or None; stats the path only when something is there."""
    if not current.exists:
        return None
    path = store.root / rel
    if current.size == -1:
        from flexforge.fsutil import open_regular

        try:
            os.close(open_regular(path, follow=True))
        except OSError as exc:
            return unusable_output(rel, exc)
    elif not os.access(path, os.R_OK):
        return unusable_output(rel, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    return None


def unusable_output(out: str, exc: OSError) -> str:
    """Why the file at `out` cannot be read or replaced, and what to do, in one line."""
    from flexforge.errors import clip

    shown = clip(out, 120)
    reason = exc.strerror or type(exc).__name__
    if reason.startswith("is "):  # fsutil.NotRegularFile: "is a folder, not a file"
        return f"{shown} {reason}; move it away so flexforge can write the image there"
    return f"cannot read {shown} ({reason}); fix its permissions or move it away"


def _seedless(parts: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in parts.items() if k != "seed"))


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
    sources: Sources | None = None,
) -> Plan:
    check_options(manifest, options)
    selected = select(manifest, options.targets, options.tags)
    facts = Facts.gather(manifest, lock, store, generator, options, sources)
    store.prefetch(_files_to_hash(manifest, lock, selected))
    steps = _steps(manifest, selected, facts)
    lost = _lost_candidates(steps, facts)
    if lost:  # rare: a pick or a missing output needs a candidate this machine cannot read
        facts.needed |= lost
        steps = _steps(manifest, selected, facts)
    _mark_resumes(steps, store, provider)
    if generator != "draft":
        for step in steps:
            if step.action in GENERATES and RESUME not in step.reasons:  # a resumed task is paid
                step.estimated_cost_usd = estimate_asset(step.asset, manifest, provider)
    claimed = _claimed(steps, facts)
    orphaned = sorted(facts.orphans)
    if options.targets or options.tags:
        # A build of some assets drops only the entries its own renames take over: another
        # orphan's seed belongs to a rename (or an id added back) built later.
        orphaned = [old_id for old_id in orphaned if old_id in claimed]
    return Plan(manifest, provider, generator, steps, orphaned, facts, claimed)


def _claimed(steps: list[Step], facts: Facts) -> dict[str, str]:
    """Orphaned entry -> the id of the step that takes its seed (_rename_of) or its image."""
    claimed = dict(facts.renamed)
    for step in steps:
        origin = step.source.origin if step.source is not None else None
        if step.action == RENAME and origin is not None and origin in facts.orphans:
            claimed.setdefault(origin, step.asset.id)
    return claimed


def _steps(manifest: Manifest, selected: list[str], facts: Facts) -> list[Step]:
    outputs: dict[str, str | None] = {}
    steps = []
    for asset_id in selected:
        step = step_for(manifest.assets[asset_id], facts, outputs)
        outputs[asset_id] = step.output_sha256
        steps.append(step)
    return steps


def _lost_candidates(steps: list[Step], facts: Facts) -> set[str]:
    """Candidates kept in the cache only (up to date by the lock) whose bytes something this plan
    makes needs, and that no cache, working tree, commit or remote holds: they must be made again,
    and the plan says so (and what it costs) instead of the build failing."""
    by_id = {s.asset.id: s for s in steps}
    lost: set[str] = set()
    for step in steps:
        asset = step.asset
        if step.action not in GENERATES:
            continue
        refs = asset.asset_refs
        if asset.rendition is not None and "select" in asset.rendition and step.seed:
            refs = (asset.references[step.seed - 1],)  # a selection reads its pick only
        for ref in refs:
            upstream = by_id.get(ref)
            entry = facts.lock.entries.get(ref)
            if upstream is None or upstream.asset.written or upstream.action != NONE or entry is None:
                continue
            if not facts.store.has_object(entry.sha256):
                source = facts.sources.find(entry.key, upstream.asset.out, Nowhere(facts.store))
                if not _readable(facts, source):
                    lost.add(ref)
    return lost


def _readable(facts: Facts, source: Source | None) -> bool:
    """Whether the bytes are really there: a commit whose lock recorded a candidate kept in the
    cache does not hold its file, and a key record can outlive its object."""
    if source is None:
        return False
    if source.kind == CACHE:
        return facts.store.has_object(source.sha256)
    if source.kind == GIT:
        return facts.sources.read(source) is not None
    return True


def _files_to_hash(manifest: Manifest, lock: Lock, selected: list[str]) -> list[tuple[str, int | None]]:
    """The files the steps will hash, in the order they ask (reference files, then the output
    when the lock's entry for it has its size: `Current.matches` hashes no other)."""
    files: list[tuple[str, int | None]] = []
    for asset_id in selected:
        asset = manifest.assets[asset_id]
        files += [(ref, None) for ref in asset.references if ref not in asset.asset_refs]
        entry = lock.entries.get(asset_id)
        if entry is not None and entry.out == asset.out:
            files.append((asset.out, entry.size))
    return files


def _mark_resumes(steps: list[Step], store: Store, provider: str) -> None:
    """A task an interrupted build already paid for (journaled) is picked up, not paid again."""
    for step in steps:
        if step.action in GENERATES and step.key is not None and "replace" not in step.reasons:
            entry = store.journal_get(step.key.key)
            if entry is not None and entry.provider == provider:
                step.reasons.append(RESUME)


def estimate_asset(asset: Asset, manifest: Manifest, provider: str) -> float:
    """What generating `asset` is estimated to cost on `provider`, references included."""
    from flexforge.pricing import estimate_usd

    if asset.rendition is not None:
        return 0.0  # made locally: free
    sizes = [_reference_size(ref, manifest) for ref in asset.references]
    # A reference whose size cannot be read is billed at least the minimum: count it as 1x1.
    known = [asset.reference_size(*size) if size else (1, 1) for size in sizes]
    return estimate_usd(asset.model, asset.width, asset.height, known, provider)


def _reference_size(ref: str, manifest: Manifest) -> tuple[int, int] | None:
    upstream = manifest.assets.get(ref)
    if upstream is not None:
        return upstream.final_size or (upstream.width, upstream.height)
    from PIL import Image

    try:
        with Image.open(manifest.root / ref) as img:
            return img.size
    except Exception:  # an unreadable reference fails later, with its own message
        return None
