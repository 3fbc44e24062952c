"""Carrying out a plan: an asyncio scheduler that starts each asset as soon as its inputs exist.

After every asset the output is renamed into place, its object cached and the lock rewritten,
so an interrupted build keeps all finished work. Paid tasks are journaled before being waited on.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flexforge.confine import Resolver, output_problem
from flexforge.errors import FlexforgeError, ProviderError
from flexforge.fsutil import fsync_dir, install, remove_stale_temps, stage_bytes
from flexforge.keys import content_key
from flexforge.lockfile import Lock, LockChangedError, LockEntry
from flexforge.manifest import Asset
from flexforge.options import BuildOptions, PlanOptions
from flexforge.planner import (
    BLOCKED,
    DRIFTED,
    GENERATES,
    NONE,
    RESTORE,
    Plan,
    Step,
    decide,
    reference_digests,
    resolve_seed,
)
from flexforge.progress import Reporter
from flexforge.providers import GeneratedImage, Provider, TaskContext
from flexforge.request import ImageRequest, ReferenceInput
from flexforge.store import JournalEntry, KeyRecord, LedgerEntry, Store

# Outcomes of one asset in a build.
GENERATED, RESTORED, UP_TO_DATE, FAILED, SKIPPED = (
    "generated",
    "restored",
    "up to date",
    "failed",
    "skipped",
)
SEED_RANGE = 2**32
LOCK_SAVE_INTERVAL = 0.25  # seconds


@dataclass(slots=True)
class Outcome:
    asset_id: str
    result: str
    detail: str = ""
    cost_usd: float = 0.0


@dataclass(slots=True)
class BuildResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    estimated_cost_usd: float = 0.0

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.result == result)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.result in (FAILED, SKIPPED)]

    @property
    def actual_cost_usd(self) -> float:
        return round(sum(o.cost_usd for o in self.outcomes.values()), 6)


class _TaskRecord:
    """The TaskContext one provider call gets: journal access for one asset's content key."""

    def __init__(
        self,
        store: Store,
        step: Step,
        key: str,
        provider: str,
        reporter: Reporter,
        *,
        fresh: bool,
        on_ready: Callable[[], None],
    ) -> None:
        self.ready = on_ready
        self._store = store
        self._asset = step.asset.id
        self._key = key
        self._provider = provider
        self._reporter = reporter
        self.finished = False
        entry = store.journal_get(key)
        cached = store.key_record(key) if entry is not None and fresh else None
        if entry is not None and cached is not None and cached.task_id == entry.task_id:
            # --replace wants a new image, and this journaled task's image is the one we have (a
            # kill came between caching it and clearing the journal): its cost is already counted.
            store.journal_remove(key)
            entry = None
        self.resumable = entry if entry is not None and entry.provider == provider else None
        # What the build tells the user about this task if it stops before the image is kept.
        self.on_the_wire = False  # a submission sent, its answer (the task id) not yet read
        resumed = self.resumable
        self.task_id: str | None = resumed.task_id if resumed is not None else None
        self.polling_url = resumed.polling_url if resumed is not None else ""
        self.journaled = resumed is not None
        self.journal_error: str | None = None
        self.settled = False  # the image is cached, or the task ended without one

    @property
    def asset(self) -> str:
        return self._asset

    def sending(self) -> None:
        self.on_the_wire = True

    def submitted(self, task_id: str, polling_url: str, cost_credits: float | None = None) -> None:
        self.on_the_wire = False
        self.task_id, self.polling_url = task_id, polling_url
        entry = JournalEntry(
            self._asset, self._key, self._provider, task_id, polling_url, time.time(), cost_credits
        )
        try:
            self._store.journal_put(entry)
        except (OSError, ValueError) as exc:
            # A full disk or a read-only mount (or a value JSON cannot hold): the task is paid
            # for all the same. Keep it in memory and go on to fetch it; say where it is in case
            # this build cannot.
            self.journaled = False
            self.journal_error = getattr(exc, "strerror", None) or type(exc).__name__
            self.log(
                f"task {task_id} could not be journaled ({self.journal_error}); it is paid for, "
                f"so this build goes on to fetch it (its result: {polling_url})"
            )
            return
        self.journaled = True
        self.journal_error = None
        # A new paid task: whatever an earlier one (a journaled task set aside) said no longer
        # holds, and a failure now must keep this one journaled.
        self.finished = False

    def finished_task(self) -> None:
        self.finished = True

    def forget(self) -> None:
        """Drop the journal entry of a task that is done with; a failure to (a read-only or full
        disk) leaves an entry the next build finds settled, never an asset failed after paying."""
        try:
            self._store.journal_remove(self._key)
        except OSError as exc:
            self.log(f"could not remove the journal entry of task {self.task_id} ({exc.strerror})")

    def log(self, message: str) -> None:
        self._reporter.log(f"{self._asset}: {message}")


class NothingToGenerate:
    """Stands in for a provider when the plan only restores: no provider loaded, no key needed."""

    generator = "none"
    max_in_flight = 1

    def __init__(self, name: str) -> None:
        self.name = name

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage:
        raise ProviderError(f"{request.asset_id} needs generating, but the plan said it would not")

    async def aclose(self) -> None:
        pass


class _Slot:
    """One of the build's `--jobs` places, given back early when the API says a task is Ready:
    its download no longer counts against the tasks in flight, and the next can start."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def __aenter__(self) -> _Slot:
        await self._semaphore.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


class Builder:
    def __init__(
        self,
        plan: Plan,
        lock: Lock,
        store: Store,
        provider: Provider,
        reporter: Reporter,
        plan_options: PlanOptions,
        options: BuildOptions,
    ) -> None:
        self.plan = plan
        self.lock = lock
        self.store = store
        self.provider = provider
        self.reporter = reporter
        self.plan_options = plan_options
        self.options = options
        self.result = BuildResult(estimated_cost_usd=plan.estimated_cost_usd)
        self.outputs: dict[str, str | None] = {}
        self.drifted: set[str] = set()
        self.stop_reason: str | None = None
        self.committed_usd = 0.0  # spent plus reserved, for --max-cost
        self.slots = asyncio.Semaphore(max(1, min(options.jobs, provider.max_in_flight)))
        self.tasks: dict[str, asyncio.Task[str | None]] = {}
        self.estimates = {s.asset.id: s.estimated_cost_usd for s in plan.steps}
        self.pinned = store.pinned_seeds()
        self.lock_saved_at = 0.0
        # Outputs written beside their place, renamed in just after the lock names them.
        self.staged: dict[str, tuple[Path, str, str]] = {}
        # What the lock said of each staged asset before, to put back if its rename fails.
        self.replaced: dict[str, LockEntry | None] = {}
        self.resolver = Resolver(plan.manifest.root)
        self.manifest_stamp = _stamp(plan.manifest.path)
        self.made_here: set[str] = set()
        self.lock_flush: asyncio.TimerHandle | None = None
        self.records: dict[str, _TaskRecord] = {}

    async def run(self) -> BuildResult:
        for orphan in self.plan.orphaned:
            self.lock.entries.pop(orphan, None)
        self._remove_stale_temps()
        try:
            for step in self.plan.steps:
                self.tasks[step.asset.id] = asyncio.create_task(self._run_step(step))
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        finally:
            for task in self.tasks.values():
                task.cancel()
            self._flush_lock()
            self.store.save()
        return self.result

    def _remove_stale_temps(self) -> None:
        """A build killed mid-write leaves a temp file beside an output or the lock, in folders
        users commit."""
        folders: dict[Path, set[str]] = {self.lock.path.parent: {self.lock.path.name}}
        for step in self.plan.steps:
            path = self.plan.manifest.root / step.asset.out
            folders.setdefault(path.parent, set()).add(path.name)
        for folder, names in folders.items():
            remove_stale_temps(folder, names)

    def _record(self, outcome: Outcome) -> None:
        self.result.outcomes[outcome.asset_id] = outcome
        self.reporter.asset_done(outcome.asset_id, outcome.result, outcome.detail)

    async def _run_step(self, step: Step) -> str | None:
        asset = step.asset
        for upstream in asset.asset_refs:
            if await self.tasks[upstream] is None:
                self._record(Outcome(asset.id, SKIPPED, f"needs {upstream}, which failed"))
                return None
        try:
            return await self._build(asset)
        except ProviderError as exc:
            self._fail(asset.id, str(exc), fatal=exc.fatal)
        except OSError as exc:  # a full disk, a read-only folder, a name too long...
            self._fail(asset.id, _oserror(exc), fatal=False)
        except FlexforgeError as exc:  # local state refused (a link in .flexforge/...)
            self._fail(asset.id, str(exc), fatal=True)
        except Exception as exc:  # a bug must fail its asset loudly, not vanish in gather()
            self._fail(asset.id, f"internal error: {type(exc).__name__}: {exc}", fatal=False)
        return None

    def _fail(self, asset_id: str, reason: str, *, fatal: bool) -> None:
        self._record(Outcome(asset_id, FAILED, reason))
        if fatal or not self.options.keep_going:
            self.stop_reason = self.stop_reason or f"{asset_id} failed"

    async def _build(self, asset: Asset) -> str | None:
        entry = self.lock.entries.get(asset.id)
        seed = resolve_seed(asset, entry, asset.id in self.plan_options.reseed, self.pinned.get(asset.id))
        digests = reference_digests(asset, self.store, self.outputs)
        replace = asset.id in self.plan_options.replace
        step = decide(asset, entry, self.store, self.plan.generator, seed, digests, replace=replace)
        if step.action == NONE:
            self._record(Outcome(asset.id, UP_TO_DATE))
            return self._output(asset.id, step.output_sha256)
        if step.action == BLOCKED:
            self._fail(asset.id, step.reasons[0], fatal=False)
            return None
        if step.action == DRIFTED:
            self.drifted.add(asset.id)
            detail = "output edited by hand; left alone (`flexforge accept` or `--replace`)"
            self._record(Outcome(asset.id, DRIFTED, detail))
            return self._output(asset.id, step.output_sha256)
        drifted_inputs = [r for r in asset.asset_refs if r in self.drifted]
        if drifted_inputs and step.action != RESTORE:
            self._record(Outcome(asset.id, SKIPPED, f"needs {drifted_inputs[0]}, whose output drifted"))
            return None
        if seed is None:
            seed = secrets.randbelow(SEED_RANGE)
            self.store.pin_seed(asset.id, seed)
            step = decide(asset, entry, self.store, self.plan.generator, seed, digests, replace=replace)
        if step.action == RESTORE:
            restored = await self._restore(step)
            if restored is not None:
                return self._output(asset.id, restored)
            step = decide(asset, entry, self.store, self.plan.generator, seed, digests, replace=True)
        return self._output(asset.id, await self._generate(step, seed))

    def _output(self, asset_id: str, sha256: str | None) -> str | None:
        self.outputs[asset_id] = sha256
        return sha256

    async def _restore(self, step: Step) -> str | None:
        """Copy the cached output back; None if the cached object turned out damaged or is not
        the image the manifest declares (a planted object, a lock from elsewhere)."""
        assert step.cached is not None and step.key is not None and step.seed is not None
        asset = step.asset
        sha = step.cached.sha256
        out = self._output_path(asset)
        data = await asyncio.to_thread(self.store.read_object, sha)
        problem = "damaged" if data is None else _declared_problem(data, asset)
        if data is None or problem is not None:
            self.reporter.log(f"{asset.id}: the cached copy is {problem}; generating it again")
            return None
        staged = await _staged(stage_bytes, out, data)
        assert staged is not None  # stage_bytes always stages
        self._stage(asset, staged, sha)
        record = step.cached
        old = self.lock.entries.get(asset.id)
        if old is not None and old.key == step.key.key:  # keep what the lock knew of the task
            record = replace(record, task_id=old.task_id, cost_usd=old.cost_usd, provider=old.provider)
        # Reported before the lock write, which may still fail it (a rename refused).
        self._record(Outcome(asset.id, RESTORED, "from the local cache, no API call"))
        self._commit(step, step.seed, sha, len(data), record)
        return sha

    def _stage(self, asset: Asset, staged: Path, sha: str) -> None:
        self.staged[asset.id] = (staged, asset.out, sha)
        self.made_here.add(asset.id)

    async def _generate(self, step: Step, seed: int) -> str | None:
        asset = step.asset
        digests = step.reference_digests
        assert digests is not None
        key = content_key(asset, self.plan.generator, seed, digests)
        estimate = self._estimate(asset)
        request = self._request(asset, seed, digests)  # refuses bad references before any paid call
        async with _Slot(self.slots) as slot:
            if self.stop_reason is not None:
                self._record(Outcome(asset.id, SKIPPED, f"not started: {self.stop_reason}"))
                return None
            limit = self.options.max_cost_usd
            if limit is not None and self.committed_usd + estimate > limit + 1e-9:
                self._record(
                    Outcome(
                        asset.id,
                        SKIPPED,
                        f"not started: its estimate ${estimate:.4f} would take the run past "
                        f"--max-cost ${limit:.2f} (${self.committed_usd:.4f} committed)",
                    )
                )
                return None
            self.committed_usd += estimate
            self.reporter.asset_started(asset.id, step.action)
            fresh = asset.id in self.plan_options.replace
            record = _TaskRecord(
                self.store,
                step,
                key.key,
                self.provider.name,
                self.reporter,
                fresh=fresh,
                on_ready=slot.release,
            )
            self.records[asset.id] = record
            try:
                image = await self.provider.generate(request, record)
                await asyncio.to_thread(_verify, image, asset)
            except ProviderError:
                self.committed_usd -= estimate
                if record.finished:
                    record.settled = True
                    record.forget()
                raise
            except Exception as exc:  # a provider bug must fail one asset, not crash the build
                self.committed_usd -= estimate
                raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
        if asset.final_size is not None:
            from flexforge.imaging import fit_cover

            image.data = await asyncio.to_thread(
                fit_cover, image.data, *asset.final_size, asset.output_format
            )
        cost = _cost_usd(image, estimate, self.plan.generator)
        self.committed_usd += cost - estimate
        # Cache first, output second: once the output exists, a restart can always restore it.
        # A paid image (its object fsynced below, its key record here) must survive a power cut
        # before the journal entry that would re-fetch it goes.
        paid = image.task_id is not None
        sha = await asyncio.to_thread(self.store.put_object, image.data)
        made = KeyRecord(
            sha256=sha,
            size=len(image.data),
            provider=self.provider.name,
            seed=seed,
            task_id=image.task_id,
            cost_usd=cost,
        )
        self.store.put_key_record(key.key, made, durable=paid)
        record.settled = True
        staged = await _staged(stage_bytes, self._output_path(asset), image.data)
        assert staged is not None  # stage_bytes always stages
        self._stage(asset, staged, sha)
        if image.task_id is not None:
            self._ledger(
                LedgerEntry(
                    time.time(),
                    asset.id,
                    key.key,
                    self.provider.name,
                    image.task_id,
                    cost,
                    image.cost_credits,
                )
            )
            # The paid image must survive a power cut before the record that would re-fetch it goes.
            await asyncio.to_thread(self.store.sync_object, sha)
        detail = f"${cost:.4f}" if cost else ""
        self._record(Outcome(asset.id, GENERATED, detail, cost))
        self._commit(replace(step, key=key, seed=seed, output_sha256=sha), seed, sha, len(image.data), made)
        record.forget()
        return sha

    def _ledger(self, entry: LedgerEntry) -> None:
        """Record spend; a ledger that cannot be written costs the report, never the paid image."""
        try:
            self.store.ledger_append(entry)
        except (OSError, FlexforgeError, ValueError) as exc:
            self.reporter.log(f"{entry.asset}: spend not recorded in the ledger ({exc})")

    def _commit(self, step: Step, seed: int, sha: str, size: int, record: KeyRecord) -> None:
        assert step.key is not None
        asset = step.asset
        self.replaced.setdefault(asset.id, self.lock.entries.get(asset.id))
        self.lock.entries[asset.id] = LockEntry(
            key=step.key.key,
            parts=step.key.parts,
            seed=seed,
            model=asset.model,
            generator=self.plan.generator,
            provider=record.provider,
            out=asset.out,
            sha256=sha,
            size=size,
            task_id=record.task_id,
            cost_usd=record.cost_usd,
        )
        self._save_lock_soon()

    def _save_lock_soon(self) -> None:
        """Rewrite the lock after an asset, at most a few times a second: rewriting a 10,000-entry
        lock after every draft render would make a build quadratic. What finished since the last
        write is already in the object cache, so an interrupted build restores it for free."""
        now = time.monotonic()
        if now - self.lock_saved_at >= LOCK_SAVE_INTERVAL:
            self._flush_lock()
        elif self.lock_flush is None:
            delay = LOCK_SAVE_INTERVAL - (now - self.lock_saved_at)
            self.lock_flush = asyncio.get_running_loop().call_later(delay, self._flush_lock)

    def _flush_lock(self) -> None:
        """Write the lock, then rename the outputs it describes into place: a kill before the
        renames leaves outputs and lock as they were (the new images wait in the object cache),
        one after leaves them in step; only the renames themselves are in between."""
        if self.lock_flush is not None:
            self.lock_flush.cancel()
            self.lock_flush = None
        staged, self.staged = self.staged, {}
        replaced, self.replaced = self.replaced, {}
        try:
            self._save_lock()
        except (LockChangedError, OSError) as exc:
            self._abandon(staged, replaced, str(exc) if isinstance(exc, LockChangedError) else _oserror(exc))
            return
        self.lock_saved_at = time.monotonic()
        # Renames only, back to back, so the gap between the lock and its files stays a few
        # microseconds; each folder is made durable once afterwards.
        folders, failed = set(), {}
        for asset_id, (temp, rel, _) in staged.items():
            path = self.plan.manifest.root / rel
            try:
                install(temp, path, durable=False)
            except OSError as exc:
                failed[asset_id] = _oserror(exc)
                temp.unlink(missing_ok=True)
                continue
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)
        for asset_id, (_, rel, sha) in staged.items():
            if asset_id not in failed:
                self.store.remember_written(rel, sha)
        if failed:
            # The lock already names these files: put their old entries back so the lock never
            # names a file that is not there. Their images stay cached for the next build.
            self._abandon({}, {a: replaced.get(a) for a in failed}, "", reasons=failed)
            try:
                self._save_lock()
            except (LockChangedError, OSError) as exc:
                self.stop_reason = self.stop_reason or f"cannot write {self.lock.path.name}: {exc}"

    def _save_lock(self) -> None:
        if _stamp(self.plan.manifest.path) != self.manifest_stamp:
            raise LockChangedError(
                f"{self.plan.manifest.label} changed on disk while this build ran (a `git checkout`?); "
                f"{self.lock.path.name} was left as it is. Run `flexforge build` again: finished "
                "images are cached"
            )
        self.lock.save()

    def _abandon(
        self,
        staged: dict[str, tuple[Path, str, str]],
        replaced: dict[str, LockEntry | None],
        reason: str,
        *,
        reasons: dict[str, str] | None = None,
    ) -> None:
        """Undo what a failed lock write or rename would leave unrecorded, and fail those assets."""
        for temp, _, _ in staged.values():
            temp.unlink(missing_ok=True)
        for asset_id, old in replaced.items():
            if old is None:
                self.lock.entries.pop(asset_id, None)
            else:
                self.lock.entries[asset_id] = old
            why = (reasons or {}).get(asset_id, reason)
            self._fail(asset_id, f"not recorded: {why}", fatal=reasons is None)
        if reasons is None:
            self.stop_reason = self.stop_reason or reason

    def _output_path(self, asset: Asset) -> Path:
        """Where the output goes, checked as if validation had just run: a folder swapped for a
        link since the manifest was validated, `.git/`, the state folder: nothing is ever written
        there."""
        problem = output_problem(self.resolver, asset.out, asset.output_format)
        if problem is not None:
            raise ProviderError(f"{problem}; not written")
        return self.plan.manifest.root / asset.out

    def _request(self, asset: Asset, seed: int, digests: list[str]) -> ImageRequest:
        from flexforge.imaging import check_reference

        root = self.plan.manifest.root
        refs = []
        for ref, digest in zip(asset.references, digests, strict=True):
            upstream = self.plan.manifest.assets.get(ref)
            path = root / ref
            if upstream is not None:
                # Made in this build, an upstream output is read from the object cache (its file
                # is renamed into place only with the next lock write); else from its file.
                cached = self.store.object_path(digest)
                path = cached if upstream.id in self.made_here else root / upstream.out
            # Checked again here, confinement too: the file or a folder on its way may have been
            # swapped (for a link out of the root) since the manifest was validated.
            problem = None
            if upstream is None:
                problem = (
                    check_reference(path, decode=True)
                    if self.resolver.inside(ref)
                    else ("leads outside the project root (a symbolic link?); not sent")
                )
            if problem is not None:
                raise ProviderError(f"reference {ref!r}: {problem}")
            refs.append(ReferenceInput(ref, path, digest))
        return ImageRequest(
            asset_id=asset.id,
            model=asset.model,
            prompt=asset.prompt,
            width=asset.width,
            height=asset.height,
            seed=seed,
            output_format=asset.output_format,
            safety_tolerance=asset.safety_tolerance,
            steps=asset.steps,
            guidance=asset.guidance,
            prompt_upsampling=asset.prompt_upsampling,
            references=tuple(refs),
            structured=asset.structured,
        )

    def _estimate(self, asset: Asset) -> float:
        if self.plan.generator == "draft":
            return 0.0
        if self.estimates.get(asset.id):
            return self.estimates[asset.id]
        from flexforge.pricing import estimate_usd

        return estimate_usd(asset.model, asset.width, asset.height)


async def _staged(stage: Callable[..., Path | None], *args: Any) -> Path | None:
    """Stage an output in a worker thread. Interrupted meanwhile, the thread still finishes its
    write: its temp file is then removed, never left beside an output nor installed unlocked."""
    # A plain executor future, not a task: shutting the loop down cancels every task, and a
    # cancelled task could no longer say which temp file its thread went on to write.
    write = asyncio.get_running_loop().run_in_executor(None, functools.partial(stage, *args))
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        write.add_done_callback(_discard_staged)
        raise


def _discard_staged(write: asyncio.Future[Path | None]) -> None:
    if not write.cancelled() and write.exception() is None and (staged := write.result()) is not None:
        staged.unlink(missing_ok=True)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _oserror(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"cannot write: {exc.strerror or exc}{where}"


def _declared_problem(data: bytes, asset: Asset) -> str | None:
    from flexforge.imaging import header_problem

    width, height = asset.final_size or (asset.width, asset.height)
    problem = header_problem(data, width, height, asset.output_format)
    return None if problem is None else f"not the declared image ({problem})"


def _verify(image: GeneratedImage, asset: Asset) -> None:
    from flexforge.imaging import ImageCheckError, verify_image

    try:
        verify_image(image.data, asset.width, asset.height, asset.output_format)
    except ImageCheckError as exc:
        raise ProviderError(f"the provider returned a bad image: {exc}") from None


def _cost_usd(image: GeneratedImage, estimate: float, generator: str) -> float:
    if generator == "draft":
        return 0.0
    if image.cost_credits is not None:
        from flexforge.pricing import credits_to_usd

        return credits_to_usd(image.cost_credits)
    return estimate


__all__ = ["GENERATES", "BuildResult", "Builder", "NothingToGenerate", "Outcome"]
