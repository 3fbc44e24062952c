"""Carrying out a plan: an asyncio scheduler that starts each asset as soon as its inputs exist.

After every asset the output is renamed into place, its object cached and the lock rewritten,
so an interrupted build keeps all finished work. Paid tasks are journaled before being waited on.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flexforge import gitblobs
from flexforge.confine import Resolver, output_problem
from flexforge.errors import FlexforgeError, ProviderError
from flexforge.fsutil import is_temp
from flexforge.keys import content_key
from flexforge.leases import Claim, Team
from flexforge.lockfile import Lock
from flexforge.manifest import Asset
from flexforge.options import BuildOptions, PlanOptions
from flexforge.outputs import Flushed, Outputs, oserror
from flexforge.planner import (
    BLOCKED,
    CONFLICT,
    DRIFTED,
    GENERATES,
    HELD,
    LFS_REASON,
    NONE,
    REGENERATE,
    RESTORES,
    Plan,
    Step,
    generator_of,
    step_for,
)
from flexforge.prefetch import GitPrefetch
from flexforge.progress import Reporter
from flexforge.providers import GeneratedImage, Provider, TaskContext
from flexforge.records import RecordError
from flexforge.request import ImageRequest, ReferenceInput
from flexforge.sources import IN_PLACE, REMOTE, WORKING_TREE, Nowhere, Source, declared_problem
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
HELD_DETAIL = {
    DRIFTED: "output edited by hand; left alone (`flexforge accept {id}` or `--replace {id}`)",
    CONFLICT: "a file flexforge did not make is at its output path; left alone "
    "(`flexforge accept {id}` adopts it, `build --replace {id}` overwrites it)",
}
# Steps that read no input's bytes: their upstream restores need not go into the object cache.
_READS_NO_INPUT = (*RESTORES, NONE, *HELD, BLOCKED)
CLAIM_ATTEMPTS = 4  # a lease's remote calls that fail (a 500 from the store) are tried again


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
    # Submissions that got no answer saying whether they created (and charged) a task, as
    # (asset, its estimate: what each may have cost).
    maybe_charged: list[tuple[str, float]] = field(default_factory=list)

    @property
    def maybe_charged_usd(self) -> float:
        return round(sum(usd for _, usd in self.maybe_charged), 6)

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
        on_maybe_charged: Callable[[bool], bool],
        team: Team | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.ready = on_ready
        self._on_maybe_charged = on_maybe_charged
        self.uncertain = 0  # submissions that may have been charged
        self.replays = 0
        self._team = team
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
        if self.resumable is None and claim is not None:
            self.resumable = claim.resume  # another runner's task, from the team remote's lease
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

    def submitted(
        self, task_id: str, polling_url: str, cost_credits: float | None = None
    ) -> asyncio.Future[None]:
        self.on_the_wire = False
        self.task_id, self.polling_url = task_id, polling_url
        entry = JournalEntry(
            self._asset, self._key, self._provider, task_id, polling_url, time.time(), cost_credits
        )
        # A new paid task: whatever an earlier one (a journaled task set aside) said no longer
        # holds, and a failure now must keep this one journaled.
        self.finished = False
        # The write and its fsyncs go to a worker thread, which the provider awaits before it
        # polls: on the event loop they would hold up every other task's polls and submissions.
        return asyncio.ensure_future(self._journal(entry))

    async def _journal(self, entry: JournalEntry) -> None:
        try:
            await asyncio.to_thread(self._store.journal_put, entry)
        except (OSError, RecordError) as exc:
            # A full disk, a read-only mount, a task id no journal may hold: the task is paid for
            # all the same. Keep it in memory and go on to fetch it; say where it is in case this
            # build cannot.
            self.journaled = False
            self.journal_error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.log(
                f"task {entry.task_id} could not be journaled ({self.journal_error}); it is paid for, "
                f"so this build goes on to fetch it (its result: {entry.polling_url})"
            )
        else:
            self.journaled = True
            self.journal_error = None
        if self._team is not None:
            self._team.submitted(self._key, entry.task_id, entry.polling_url, entry.cost_credits)

    def finished_task(self) -> None:
        self.finished = True

    def maybe_charged(self, reason: str, *, replay: bool) -> bool:
        self.on_the_wire = False  # its answer is lost for good: counted in the summary instead
        self.uncertain += 1
        allowed = self._on_maybe_charged(replay)
        self.replays += int(replay and allowed)
        return allowed

    def forget(self) -> None:
        """Drop the journal entry of a task that is done with; a failure to (a read-only or full
        disk) leaves an entry the next build finds settled, never an asset failed after paying."""
        try:
            self._store.journal_remove(self._key)
        except OSError as exc:
            self._not_forgotten(exc)

    async def forget_off_loop(self) -> None:
        """`forget`, its unlink on a worker thread: a busy disk must not hold up other tasks' polls."""
        try:
            await asyncio.to_thread(self._store.journal_remove, self._key)
        except OSError as exc:
            self._not_forgotten(exc)

    def _not_forgotten(self, exc: OSError) -> None:
        self.log(f"could not remove the journal entry of task {self.task_id} ({exc.strerror})")

    def log(self, message: str) -> None:
        self._reporter.log(f"{self._asset}: {message}")


class NothingToGenerate:
    """Stands in for a provider when the plan only restores: no provider loaded, no key needed.
    A restore source that turns out damaged (a tampered remote object) still needs its image:
    then the real provider is loaded (`load`), unless the build may not pay (`--frozen`)."""

    generator = "none"
    max_in_flight = 1

    def __init__(self, name: str, load: Callable[[], Provider] | None = None) -> None:
        self.name = name
        self._load = load
        self._real: Provider | None = None

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage:
        if self._load is None:
            raise ProviderError(f"{request.asset_id} needs generating, but the plan said it would not")
        if self._real is None:
            try:
                self._real = self._load()
            except FlexforgeError as exc:
                raise ProviderError(str(exc), fatal=True) from None
        return await self._real.generate(request, task)

    async def aclose(self) -> None:
        if self._real is not None:
            await self._real.aclose()


class _Slot:
    """One of the build's `--jobs` places, given back early when the API says a task is Ready:
    its download no longer counts against the tasks in flight, and the next can start."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def __aenter__(self) -> _Slot:
        await self.take()
        return self

    async def take(self) -> None:
        if not self._held:
            await self._semaphore.acquire()
            self._held = True

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
        team: Team | None = None,
    ) -> None:
        self.plan = plan
        self.team = team
        self.lock = lock
        self.store = store
        self.provider = provider
        self.reporter = reporter
        self.plan_options = plan_options
        self.options = options
        self.result = BuildResult(estimated_cost_usd=plan.estimated_cost_usd)
        self.outputs: dict[str, str | None] = {}
        self.held: set[str] = set()  # drifted or in conflict: left alone, dependents wait
        self.stop_reason: str | None = None
        self.committed_usd = 0.0  # spent plus reserved, for --max-cost
        self.slots = asyncio.Semaphore(max(1, min(options.jobs, provider.max_in_flight)))
        self.ahead = asyncio.Semaphore(max(1, min(options.jobs, provider.max_in_flight)))
        self.tasks: dict[str, asyncio.Task[str | None]] = {}
        # Each asset's output digest (None: failed or skipped) as soon as dependents may use it:
        # a generated image once it and its key record are in the cache, before its output
        # file, ledger line and journal removal (a chain waited on those, link after link).
        self.available: dict[str, asyncio.Future[str | None]] = {}
        self.cached_here: set[str] = set()  # generated this run; its bytes are in the cache
        self.estimates = {s.asset.id: s.estimated_cost_usd for s in plan.steps}
        self.facts = plan.facts
        self.planned = {s.asset.id: s for s in plan.steps}
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())  # names this build in the ledger
        # Restored outputs that others build on go into the object cache, where _request reads
        # them: at once for a dependent planned to be made; else (a thousand restores, whose
        # dependents are restored too) only one staged in a temp file, as its output file does
        # not hold its bytes until the next lock write. One written in place is read from there.
        self.referenced = {r for s in plan.steps for r in s.asset.asset_refs}
        self.read_here = {
            r for s in plan.steps if s.action not in _READS_NO_INPUT for r in s.asset.asset_refs
        }
        self.resolver = Resolver(plan.manifest.root)
        watch = (plan.manifest.path, plan.manifest.label)
        self.recorder = Outputs(lock, store, watch=watch, on_flushed=self._flushed)
        self.prefetch = GitPrefetch(plan.facts.sources, self._stage_restored)
        self.records: dict[str, _TaskRecord] = {}

    async def run(self) -> BuildResult:
        for orphan in self.plan.orphaned:
            if orphan not in self.plan.claimed:
                self.recorder.drop(orphan)
        self.recorder.remove_stale_temps([step.asset.out for step in self.plan.steps])
        try:
            restores = [s for s in self.plan.steps if s.action in RESTORES and s.asset.written]
            self.recorder.intend(_in_place(restores))
            self.prefetch.start(restores)
            loop = asyncio.get_running_loop()
            for step in self.plan.steps:
                self.available[step.asset.id] = loop.create_future()
            for step in self.plan.steps:
                self.tasks[step.asset.id] = asyncio.create_task(self._run_step(step))
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        finally:
            for task in self.tasks.values():
                task.cancel()
            # A renamed id's old entry goes once the new id is in the lock: a build stopped
            # before that (a budget, a failure, Ctrl-C) leaves the seed for the next one.
            for old_id, new_id in self.plan.claimed.items():
                if old_id in self.plan.orphaned and new_id in self.recorder.lock.entries:
                    self.recorder.drop(old_id)
            if self.team is not None:
                self.team.close()
            self.prefetch.close()
            self.recorder.close()
            self.facts.sources.close()
        return self.result

    def _record(self, outcome: Outcome) -> None:
        self.result.outcomes[outcome.asset_id] = outcome
        self.reporter.asset_done(outcome.asset_id, outcome.result, outcome.detail)

    async def _run_step(self, step: Step) -> str | None:
        asset = step.asset
        try:
            for upstream in asset.asset_refs:
                if await self.available[upstream] is None:
                    self._record(Outcome(asset.id, SKIPPED, f"needs {upstream}, which failed"))
                    return None
            return self._make_available(asset.id, await self._build(asset))
        except ProviderError as exc:
            self._fail(asset.id, str(exc), fatal=exc.fatal)
        except OSError as exc:  # a full disk, a read-only folder, a name too long...
            self._fail(asset.id, oserror(exc), fatal=False)
        except FlexforgeError as exc:  # local state refused (a link in .flexforge/...)
            self._fail(asset.id, str(exc), fatal=True)
        except Exception as exc:  # a bug must fail its asset loudly, not vanish in gather()
            self._fail(asset.id, f"internal error: {type(exc).__name__}: {exc}", fatal=False)
        finally:
            self._make_available(asset.id, None)  # failed or stopped, unless said before
        return None

    def _make_available(self, asset_id: str, sha256: str | None) -> str | None:
        """Let dependents go on with `asset_id`'s output (the first word counts)."""
        future = self.available.get(asset_id)
        if future is not None and not future.done():
            future.set_result(sha256)
        return sha256

    def _fail(self, asset_id: str, reason: str, *, fatal: bool) -> None:
        self._record(Outcome(asset_id, FAILED, reason))
        if fatal or not self.options.keep_going:
            self.stop_reason = self.stop_reason or f"{asset_id} failed"

    def _step(self, asset: Asset) -> Step:
        """step_for, or the plan's own answer when every input came out as the plan expected
        (the same call on the same inputs, made moments ago under this build lock)."""
        planned = self.planned.get(asset.id)
        if planned is not None and planned.reference_digests is not None:
            pairs = zip(asset.references, planned.reference_digests, strict=True)
            if all(self.outputs.get(ref) == digest for ref, digest in pairs if ref in asset.asset_refs):
                return planned
        return step_for(asset, self.facts, self.outputs)

    async def _build(self, asset: Asset) -> str | None:
        step = self._step(asset)
        if step.action == NONE:
            self._record(Outcome(asset.id, UP_TO_DATE))
            return self._output(asset.id, step.output_sha256)
        if step.action == BLOCKED:
            self._fail(asset.id, step.reasons[0], fatal=False)
            return None
        if step.action in HELD:
            self.held.add(asset.id)
            detail = HELD_DETAIL[step.action].format(id=asset.id)
            if LFS_REASON in step.reasons:  # a clone made without `git lfs`: nobody's edit
                detail = f"{LFS_REASON}; left alone"
            self._record(Outcome(asset.id, step.action, detail))
            return self._output(asset.id, step.output_sha256)
        held_inputs = [r for r in asset.asset_refs if r in self.held]
        if held_inputs and step.action not in RESTORES:
            self._record(Outcome(asset.id, SKIPPED, f"needs {held_inputs[0]}, which was left alone"))
            return None
        if step.seed is None:
            seed = self._draw_seed(asset, step.reference_digests or [])
            self.store.pin_seed(asset.id, seed)
            step = step_for(asset, self.facts, self.outputs, seed=seed)
        if step.action in RESTORES:
            restored = await self._restore(step)
            if restored is not None:
                return self._output(asset.id, restored)
            step = replace(step, action=REGENERATE, source=None)
        if asset.rendition is not None:
            return self._output(asset.id, await self._render(step))
        return self._output(asset.id, await self._generate(step))

    async def _render(self, step: Step) -> str | None:
        """A free rendition: made here from its input's bytes, no provider, no slot, no cost."""
        from flexforge.rendition import RENDITION, render

        asset, key = step.asset, step.key
        assert key is not None and step.seed is not None and asset.rendition is not None
        root = self.plan.manifest.root
        for ref in asset.references:
            if ref not in asset.asset_refs and not self.resolver.inside(ref):
                raise ProviderError(f"{ref!r} leads outside the project root (a symbolic link?); not read")
        index = step.seed - 1 if "select" in asset.rendition else 0  # a selection reads its pick
        first = asset.references[index]
        path = root / first
        if first in asset.asset_refs:
            upstream = self.plan.manifest.assets[first]
            digest = (step.reference_digests or [None] * (index + 1))[index]
            here = upstream.id in self.recorder.made_here or upstream.id in self.cached_here
            made_here = here and digest is not None
            # Restored in place and not cached (nothing was planned to build on it): its file.
            cached = made_here and digest is not None and self.store.has_object(digest)
            path = self.store.object_path(digest) if cached and digest else root / upstream.out
            if not upstream.written and digest is not None and not made_here:
                path = await asyncio.to_thread(self._kept, upstream, digest)
        self.reporter.asset_started(asset.id, step.action)
        source = await asyncio.to_thread(path.read_bytes)
        data = await asyncio.to_thread(render, asset.rendition, source, root)
        sha = await asyncio.to_thread(self.store.put_object, data, durable=False)
        made = KeyRecord(sha256=sha, size=len(data), provider=RENDITION, seed=step.seed, cost_usd=0.0)
        self.store.put_key_record(key.key, made, durable=False)
        staged = await _staged(self.recorder.stage, self._output_path(asset), data)
        assert staged is not None
        self._record(Outcome(asset.id, GENERATED, "rendition, free"))
        self._commit(step, made, staged)
        return sha

    def _draw_seed(self, asset: Asset, digests: list[str | None]) -> int:
        """A seed for an asset that has none. With a team remote, every machine draws the same one
        (from the asset's other key parts), so that their builds share one key, one lease and one
        paid task; `--reseed` still draws at random."""
        if self.team is None or asset.id in self.plan_options.reseed:
            return secrets.randbelow(SEED_RANGE)
        known = [d for d in digests if d is not None]
        unseeded = content_key(asset, self.plan.generator, 0, known).key
        return int.from_bytes(hashlib.sha256(f"seed:{unseeded}".encode()).digest()[:4], "big")

    def _output(self, asset_id: str, sha256: str | None) -> str | None:
        self.outputs[asset_id] = sha256
        return sha256

    async def _restore(self, step: Step) -> str | None:
        """Bring the step's source back into place; None if it turned out damaged, changed or
        not the image the manifest declares (a planted object, a lock from elsewhere)."""
        assert step.source is not None and step.key is not None and step.seed is not None
        asset, source = step.asset, step.source
        sources = self.facts.sources
        if source.kind == REMOTE:  # what the remote says of who made it (a nicety: may be absent)
            source = await asyncio.to_thread(sources.remote_details, source, step.key.key)
        if source.kind == IN_PLACE:
            problem = await asyncio.to_thread(sources.in_place_problem, source, asset)
            staged = None
        elif not asset.written:  # a candidate kept in the cache: restored there, not at `out`
            problem = await asyncio.to_thread(sources.cache, source, asset)
            staged = None
        else:
            taken = await self.prefetch.take(asset, source)
            staged, problem = taken or await _staged_from(
                self._fetch, source, asset, self._output_path(asset)
            )
        if problem is not None:
            self.reporter.log(f"{asset.id}: the copy from {source.label} is {problem}; generating it again")
            return None
        detail = "already in place" if source.kind == IN_PLACE else f"from {source.label}, no API call"
        # Reported before the lock write, which may still fail it (a rename refused).
        self._record(Outcome(asset.id, RESTORED, detail))
        # Not urgent: a build killed before its next lock write restores them again, for free.
        self._commit(step, self._record_of(source, step.seed), staged, urgent=False)
        return source.sha256

    def _fetch(self, source: Source, asset: Asset, dest: Path) -> tuple[Path | None, str | None]:
        """In a worker thread: the source's verified bytes staged beside `dest` without fsync
        (the lock write makes them durable, all at once), and cached if others build on them."""
        data, problem = self.facts.sources.fetch(source, asset)
        if data is None:
            return None, problem
        return self._stage_restored(asset, data, dest=dest), None

    def _stage_restored(
        self, asset: Asset, data: bytes, blob: str | None = None, dest: Path | None = None
    ) -> Path:
        """Verified restored bytes (whose git blob id is `blob`, when git named it) staged at the
        asset's output, without fsync; cached too if others build on them (they read their
        inputs from the cache)."""
        written = self.recorder.restore(asset.out, dest or self._output_path(asset), data, blob)
        if asset.id in self.read_here or (asset.id in self.referenced and is_temp(written)):
            self.store.put_object(data)  # a no-op when cached already
        return written

    def _record_of(self, source: Source, seed: int) -> KeyRecord:
        provider = source.provider or self.provider.name
        return KeyRecord(source.sha256, source.size, provider, seed, source.task_id, source.cost_usd)

    async def _generate(self, step: Step) -> str | None:
        asset, key, seed = step.asset, step.key, step.seed
        assert key is not None and seed is not None and step.reference_digests is not None
        digests = [d for d in step.reference_digests if d is not None]
        estimate = self._estimate(asset)
        # Refuses bad references before any paid call; reading and scaling them takes a moment:
        # off the loop. Without references there is nothing to read, and a trip through the
        # thread pool (busy with downloads) would only delay the submission.
        if asset.references:
            request = await asyncio.to_thread(self._request, asset, seed, digests)
        else:
            request = self._request(asset, seed, digests)
        fresh = asset.id in self.plan_options.replace
        slot = _Slot(self.slots)
        # With a team remote, the lease is taken before a --jobs place: its round trips to the
        # store overlap with the tasks in flight instead of holding up each submission (and a
        # wait for another runner's lease holds no place). At most `jobs` leases wait ahead.
        async with self.ahead:
            claim = await self._claim(key.key, asset.id) if not fresh else None
            try:
                await slot.take()
            except asyncio.CancelledError:
                if self.team is not None:
                    self.team.release_now(key.key)
                raise
        async with slot:
            if self.stop_reason is not None:
                await self._release(key.key, keep_task=True)
                self._record(Outcome(asset.id, SKIPPED, f"not started: {self.stop_reason}"))
                return None
            limit = self.options.max_cost_usd
            if limit is not None and self.committed_usd + estimate > limit + 1e-9:
                await self._release(key.key, keep_task=True)
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
            shared = await self._from_remote(claim, asset, key.key)
            record = _TaskRecord(
                self.store,
                step,
                key.key,
                self.provider.name,
                self.reporter,
                fresh=fresh,
                on_ready=slot.release,
                on_maybe_charged=functools.partial(self._maybe_charged, asset.id, estimate),
                team=self.team,
                claim=claim,
            )
            self.records[asset.id] = record
            try:
                image = shared or await self.provider.generate(request, record)
                await asyncio.to_thread(_verify, image, asset)
            except ProviderError:
                # A submission that may have made a task failed through maybe_charged (and is
                # counted there); any other failed one was refused or never arrived: nothing to warn of.
                record.on_the_wire = False
                self._unreserve(record, estimate)
                if record.finished:
                    record.settled = True
                    record.forget()
                await self._release(key.key, keep_task=not record.finished)
                raise
            except asyncio.CancelledError:
                if self.team is not None:
                    self.team.release_now(key.key)  # kept if it names a task: the next runner resumes
                raise
            except Exception as exc:  # a provider bug must fail one asset, not crash the build
                self._unreserve(record, estimate)
                await self._release(key.key, keep_task=True)
                raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
        # Made by another runner (finished, or a task it is still polling): paid on its account.
        paid_here = shared is None and not (claim is not None and claim.followed)
        if asset.final_size is not None:
            from flexforge.imaging import fit_cover

            image.data = await asyncio.to_thread(
                fit_cover, image.data, *asset.final_size, asset.output_format
            )
        cost = _cost_usd(image, estimate, self.plan.generator) if shared is None else 0.0
        self.committed_usd += (cost if paid_here else 0.0) - estimate
        # Cache first, output second: once the output exists, a restart can always restore it.
        # A paid image is fsynced into the cache before its journal entry goes: a power cut in
        # between must leave one or the other, or the next build pays again.
        paid = image.task_id is not None and shared is None
        sha = await asyncio.to_thread(self.store.put_object, image.data, durable=paid)
        made = KeyRecord(
            sha256=sha,
            size=len(image.data),
            provider=self.provider.name,
            seed=seed,
            task_id=image.task_id,
            cost_usd=cost,
            result_prompt=image.prompt,  # what the model followed: `explain` shows it
        )
        if image.prompt is not None:
            self._check_prompt(asset, image.prompt)
        # Its fsyncs off the event loop, where they would hold up every other task's polls.
        await asyncio.to_thread(self.store.put_key_record, key.key, made, durable=paid)
        record.settled = True
        if asset.id in self.referenced:
            # In the cache with its key record: a restart restores it for free, so dependents
            # read it from there and start now; its output file, ledger line and journal
            # removal follow meanwhile. A failure among those fails this asset only.
            self.cached_here.add(asset.id)
            self._output(asset.id, sha)
            self._make_available(asset.id, sha)
        staged = None
        if asset.written:  # else a candidate kept in the cache only: dependents read it there
            staged = await _staged(self.recorder.stage, self._output_path(asset), image.data)
            assert staged is not None  # stage always stages
        if image.task_id is not None and paid_here:
            await self._ledger(
                LedgerEntry(
                    time.time(),
                    asset.id,
                    key.key,
                    self.provider.name,  # who charged
                    image.task_id,
                    cost,
                    image.cost_credits,
                    asset.model,
                    self.run_id,
                    # whether the figure is the API's or flexforge's estimate (CometAPI may not say)
                    "reported" if image.cost_credits is not None else "estimate",
                )
            )
        if shared is not None:
            self._record(Outcome(asset.id, RESTORED, "from the team remote (made meanwhile), no API call"))
        elif not paid_here:
            detail = f"by another runner's task {image.task_id}, paid there"
            self._record(Outcome(asset.id, GENERATED, detail))
        else:
            self._record(Outcome(asset.id, GENERATED, f"${cost:.4f}" if cost else "", cost))
        self._commit(step, made, staged)
        await record.forget_off_loop()
        if self.team is not None:
            if shared is None and await self.team.push(key.key, image.data, made):
                await self.team.clear(claim)
            await self.team.release(key.key)
        return sha

    def _maybe_charged(self, asset_id: str, estimate: float, replay: bool) -> bool:
        """Count a submission that may have been paid for; its reservation is kept. A replay is
        allowed when --max-cost has room for paying once more, and then reserved too."""
        self.result.maybe_charged.append((asset_id, estimate))
        if not replay:
            return False
        limit = self.options.max_cost_usd
        if limit is not None and self.committed_usd + estimate > limit + 1e-9:
            return False
        self.committed_usd += estimate
        return True

    def _unreserve(self, record: _TaskRecord, estimate: float) -> None:
        """Give back the reservation of a failed asset, except for submissions that may have
        been charged: each attempt reserved its estimate, and only the last, if it surely made
        no task, is released."""
        attempts = 1 + record.replays
        self.committed_usd -= estimate * max(0, attempts - record.uncertain)

    def _check_prompt(self, asset: Asset, used: str) -> None:
        """Say so when the API followed another prompt than the one sent: an LLM rewrite makes
        the image hard to reproduce from the manifest."""
        if used == asset.prompt:
            return
        why = (
            "prompt_upsampling is on"
            if asset.prompt_upsampling
            else "although prompt_upsampling is off; the service ignored the switch"
        )
        self.reporter.log(
            f"{asset.id}: warning: the API rewrote the prompt ({why}); "
            f"`flexforge explain {asset.id}` shows the prompt it used"
        )

    async def _claim(self, key: str, asset_id: str) -> Claim | None:
        """Wait for this runner's turn at a key in the team remote (see flexforge.leases)."""
        if self.team is None:
            return None
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                return await self.team.claim(key, asset_id, self.provider.name)
            except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
                problem = exc
                await asyncio.sleep(0.5 * 2**attempt)
        # The backend's client has retried too; the journal still keeps this machine from paying twice.
        self.reporter.log(f"{asset_id}: the remote's lease could not be taken ({problem}); going on without")
        return None

    async def _from_remote(self, claim: Claim | None, asset: Asset, key: str) -> GeneratedImage | None:
        """The image another runner finished while this one waited, if intact in the remote."""
        if claim is None or claim.sha256 is None or self.team is None:
            return None
        data = await asyncio.to_thread(self.team.remote.get, key, claim.sha256)
        if data is None or declared_problem(data, asset) is not None:
            self.reporter.log(f"{asset.id}: the remote's copy is damaged or not this image; generating it")
            return None
        return GeneratedImage(data)

    async def _release(self, key: str, *, keep_task: bool) -> None:
        if self.team is not None:
            await self.team.release(key, keep_task=keep_task)

    async def _ledger(self, entry: LedgerEntry) -> None:
        """Record spend; a ledger that cannot be written costs the report, never the paid image.
        Its fsync on a worker thread, where it holds up no other task."""
        try:
            await asyncio.to_thread(self.store.ledger_append, entry)
        except (OSError, FlexforgeError, ValueError) as exc:
            self.reporter.log(f"{entry.asset}: spend not recorded in the ledger ({exc})")

    def _commit(self, step: Step, made: KeyRecord, staged: Path | None, *, urgent: bool = True) -> None:
        assert step.key is not None and step.seed is not None
        asset = step.asset
        generator = generator_of(asset, self.plan.generator)
        self.recorder.record(asset, step.key, step.seed, generator, made, staged, urgent=urgent)

    def _flushed(self, result: Flushed) -> None:
        """Fail what a lock write or a rename could not record; stop if the lock is unwritable."""
        for asset_id, why in result.failed.items():
            self._fail(asset_id, f"not recorded: {why}", fatal=result.fatal)
        if result.stop is not None:
            self.stop_reason = self.stop_reason or result.stop

    def _output_path(self, asset: Asset) -> Path:
        """Where the output goes, checked as if validation had just run: a folder swapped for a
        link since the manifest was validated, `.git/`, the state folder: nothing is ever written
        there."""
        problem = output_problem(self.resolver, asset.out, asset.output_format)
        if problem is not None:
            raise ProviderError(f"{problem}; not written")
        return self.plan.manifest.root / asset.out

    def _kept(self, upstream: Asset, digest: str) -> Path:
        """The object-cache file of a candidate kept in the cache only, brought there from the
        team remote or git history if this machine does not hold it."""
        if not self.store.has_object(digest):
            entry = self.lock.entries.get(upstream.id)
            problem: str | None = "not found"
            if entry is not None and entry.sha256 == digest:
                source = self.facts.sources.find(entry.key, upstream.out, Nowhere(self.store))
                problem = self.facts.sources.cache(source, upstream) if source else problem
            if problem is not None:
                raise ProviderError(
                    f"{upstream.id}: its image is in no cache, remote or commit this machine can "
                    f"read ({problem}); candidates are kept in the cache unless `settings: "
                    f"variants_dir:` commits them. `flexforge build --replace {upstream.id}` "
                    "makes it again (paid)"
                )
        return self.store.object_path(digest)

    def _scaled_reference(self, path: Path, max_mp: float) -> Path:
        """The reference scaled down to `max_mp` megapixels, kept in the object cache by its
        digest (a rebuild scales nothing again); the file itself when it already fits."""
        from flexforge.imaging import downscale

        small = downscale(path.read_bytes(), max_mp)
        if small is None:
            return path
        return self.store.object_path(self.store.put_object(small))

    def _request(self, asset: Asset, seed: int, digests: list[str]) -> ImageRequest:
        from flexforge.imaging import check_reference

        root = self.plan.manifest.root
        refs = []
        for ref, digest in zip(asset.references, digests, strict=True):
            upstream = self.plan.manifest.assets.get(ref)
            path = root / ref
            if upstream is not None:
                # Made in this build, an upstream output is read from the object cache (its file
                # is renamed into place only with the next lock write); else, or when restored in
                # place and not cached, from its file (its digest is checked below).
                cached = self.store.object_path(digest)
                here = upstream.id in self.recorder.made_here or upstream.id in self.cached_here
                path = cached if here and self.store.has_object(digest) else root / upstream.out
                if not upstream.written and not here:
                    path = self._kept(upstream, digest)
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
            _check_digest(ref, path, digest)
            if asset.reference_max_mp is not None:
                path = self._scaled_reference(path, asset.reference_max_mp)
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
        if self.plan.generator == "draft" or asset.rendition is not None:
            return 0.0
        if self.estimates.get(asset.id):
            return self.estimates[asset.id]
        from flexforge.planner import estimate_asset

        return estimate_asset(asset, self.plan.manifest, self.plan.provider)


def _check_digest(ref: str, path: Path, digest: str) -> None:
    """The key was computed from `digest`: never send (or cache an image made from) other bytes.
    A plan may have taken the digest from git's index and the lock (flexforge.gitblobs)."""
    try:
        sha256, blob = gitblobs.file_ids(path)
    except OSError as exc:
        raise ProviderError(f"reference {ref!r} cannot be read: {exc.strerror or exc}") from None
    if sha256 != digest:
        raise ProviderError(
            f"reference {ref!r} is not the file this plan keyed (sha256 {sha256[:12]}, planned "
            f"{digest[:12]}): it changed during the build, or a hand-edited flexforge.lock pairs its "
            "git blob with another digest; run `flexforge build` again (delete the lock entry's "
            "git_blobs if this repeats)"
        )
    gitblobs.note(sha256, blob)


async def _staged_from(
    stage: Callable[..., tuple[Path | None, str | None]], *args: Any
) -> tuple[Path | None, str | None]:
    """_staged for a stage that says why it staged nothing."""
    problems: list[str] = []

    def run(*inner: Any) -> Path | None:
        staged, problem = stage(*inner)
        if problem is not None:
            problems.append(problem)
        return staged

    staged = await _staged(run, *args)
    return staged, None if staged is not None else (problems[0] if problems else "unreadable")


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
    done = not write.cancelled() and write.exception() is None
    # An output written in place stays: the intent record lists it.
    if done and (staged := write.result()) is not None and is_temp(staged):
        staged.unlink(missing_ok=True)


def _in_place(restores: list[Step]) -> list[str]:
    """The outputs of `restores` that may be written in place: not already in place, and not a
    file another restore of this plan reads its bytes from (a swap of two outputs' paths)."""
    read = {s.source.path for s in restores if s.source is not None and s.source.kind == WORKING_TREE}
    return [
        s.asset.out
        for s in restores
        if s.source is not None and s.source.kind != IN_PLACE and s.asset.out not in read
    ]


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
