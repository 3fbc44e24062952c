#!/usr/bin/env python3
"""Crash consistency: SIGKILL `flexforge build` at random moments, then prove nothing was lost or paid twice.

Against an in-process emulator (latency 0.05-0.3 s, a few transient faults), on projects of
`--assets` assets with chains, drawn seeds and a reference file, this loop runs trials:

1. a trial starts a fresh project, or (with probability `--edit-rate`) edits the previous one:
   new prompt revisions (regenerate), reverted revisions (restore from cache), deleted outputs;
2. `python -m flexforge build --provider emulator` starts and is SIGKILLed at a random moment:
   a random time, as soon as the journal holds N tasks, or as soon as N outputs appeared;
   with probability `--rekill` the resumed build is killed too (up to three kills a trial);
3. after every kill: the lock parses and matches schemas/lock-v1.schema.json, and every lock
   entry's output exists with the recorded sha256;
4. the last build of the trial runs to the end and must exit 0, leave `plan` with nothing to do,
   and have paid for nothing twice: every accepted submission is attributed to its asset, and
   a second one for the same asset in a trial is a violation when, at the kill before it, the
   asset was already finished (its content key in the object cache) or its task was journaled.

One resubmission is not flexforge's to prevent: a kill after the API accepted a submission but
before its answer was journaled (the task id exists only in a response nobody read). Those are
counted apart as "kill inside the submit->journal window", and the emulator's duplicate count must
be no larger than that number. (`submit:drop`, a response lost in the network, is the same case;
flexforge fails such an asset as "may have been charged" and does not replay it, which
scripts/soak.py measures; it is not injected here.)

    python scripts/crash_harness.py --kills 200 --seed 1            # the long run (about 10 min)
    python scripts/crash_harness.py --kills 200 --seed 2 --edit-rate 0.6
    python scripts/crash_harness.py --kills 8 --assets 20           # what the test suite runs

Exit status: 0 when no violation was found, 1 otherwise. A summary table goes to stdout;
`--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK_SCHEMA = REPO / "schemas" / "lock-v1.schema.json"
SECRET = "sk-crash-harness-0123456789abcdef"  # long enough to be redacted; grepped for at the end
FAST_CLIENT = {
    "FLEXFORGE_POLL_INTERVAL": "0.02",
    "FLEXFORGE_POLL_MAX_INTERVAL": "0.1",
    "FLEXFORGE_RETRY_BASE_DELAY": "0.01",
    "FLEXFORGE_RETRY_MAX_DELAY": "0.05",
    "FLEXFORGE_LOCK_TIMEOUT": "60",
    "NO_COLOR": "1",
}
# Transient faults only: each is retried by the client and never creates a second task. (An
# ambiguous submit fault, 500/502/504 or a lost answer, fails its asset by design: scripts/soak.py.)
FAULTS = {
    "submit:429": 0.05,
    "submit:503": 0.03,
    "poll:500": 0.03,
    "poll:503": 0.02,
    "poll:drop": 0.02,
    "download:500": 0.03,
    "download:truncate": 0.03,
    "download:expired": 0.02,
}
SIZE = 64  # pixels: the renders are not what is tested here
BUILD_TIMEOUT = 180.0

# Violation kinds, in the order the summary prints them.
LOCK_INVALID = "lock does not parse or match its schema"
OUTPUT_MISMATCH = "lock entry's output missing or not the recorded sha256"
REGENERATED = "finished asset submitted again"
RESUBMITTED = "journaled task submitted again"
TWICE = "asset submitted twice (no kill between)"
UNNEEDED = "submitted an asset the plan did not need"
RESUME_FAILED = "build after the kills did not succeed"
NOT_CONVERGED = "plan not clean after the final build"
UNEXPLAINED_DUPLICATES = "emulator duplicates beyond the submit->journal window"
KEY_LEAKED = "API key found in a project file"
NO_EXIT = "interrupted build did not exit 128+N promptly"
WINDOW_ON_SIGNAL = "a submission lost to SIGINT/SIGTERM (not journaled)"
VIOLATION_KINDS = (
    LOCK_INVALID,
    OUTPUT_MISMATCH,
    REGENERATED,
    RESUBMITTED,
    TWICE,
    UNNEEDED,
    RESUME_FAILED,
    NOT_CONVERGED,
    UNEXPLAINED_DUPLICATES,
    KEY_LEAKED,
    NO_EXIT,
    WINDOW_ON_SIGNAL,
)


@dataclass
class Violation:
    kind: str
    trial: int
    detail: str


@dataclass
class Report:
    seed: int
    assets: int
    edit_rate: float
    signal: str = "SIGKILL"
    trials: int = 0
    kills: int = 0
    kills_by_trigger: Counter[str] = field(default_factory=Counter)
    finished_before_kill: int = 0
    lock_checks: int = 0
    entries_checked: int = 0
    submissions: int = 0
    resubmissions_checked: int = 0
    window: int = 0  # kills inside the submit->journal window (inherent, not a violation)
    emulator_duplicates: int = 0
    faults_injected: int = 0
    tmp_left_after_kill: int = 0
    tmp_left_after_resume: int = 0
    tmp_examples: list[str] = field(default_factory=list)  # a few names, for the report
    stale_journal_after_resume: int = 0
    false_drift_accepted: int = 0
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)

    def violation(self, kind: str, trial: int, detail: str) -> None:
        found = Violation(kind, trial, detail)
        if found not in self.violations:  # the same state seen after two kills is one finding
            self.violations.append(found)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kills_by_trigger"] = dict(self.kills_by_trigger)
        data["violation_counts"] = dict(Counter(v.kind for v in self.violations))
        return data


# -- the project ------------------------------------------------------------------------------------


class Project:
    """A generated manifest whose prompts carry a nonce and a revision per asset, so that every
    accepted submission can be traced back to the asset it was for."""

    def __init__(self, root: Path, nonce: str, count: int, unseeded_every: int) -> None:
        self.root = root
        self.nonce = nonce
        self.unseeded_every = unseeded_every
        self.ids = [f"a{i:03d}" for i in range(count)]
        self.revision = dict.fromkeys(self.ids, 0)
        self.history: dict[str, set[int]] = {i: {0} for i in self.ids}
        self.deleted: set[str] = set()  # outputs the last edit deleted, as a user would
        root.mkdir(parents=True)
        from PIL import Image

        (root / "brand").mkdir()
        Image.new("RGB", (48, 48), (20, 90, 160)).save(root / "brand" / "logo.png")
        self.write()

    def prompt(self, asset_id: str) -> str:
        return f"{self.nonce} {asset_id} rev {self.revision[asset_id]}"

    def asset_of(self, prompt: str) -> str | None:
        parts = prompt.split()
        return parts[1] if len(parts) >= 4 and parts[0] == self.nonce else None

    def out(self, asset_id: str) -> Path:
        return self.root / "assets" / f"{asset_id}.png"

    def inodes(self) -> dict[str, int]:
        found = {}
        for asset_id in self.ids:
            with suppress(FileNotFoundError):
                found[asset_id] = self.out(asset_id).stat().st_ino
        return found

    def write(self) -> None:
        lines = ["version: 1", f"defaults: {{width: {SIZE}, height: {SIZE}}}", "assets:"]
        for i, asset_id in enumerate(self.ids):
            refs = []
            if i % 4:  # chains of four
                refs.append(self.ids[i - 1])
            if i % 9 == 6:  # a second upstream further back
                refs.append(self.ids[i - 5])
            if i % 7 == 3:
                refs.append("brand/logo.png")
            fields = [f'prompt: "{self.prompt(asset_id)}"']
            every = self.unseeded_every  # these have their seed drawn and pinned by flexforge
            if not every or i % every != every - 1:
                # The revision is in the seed too: at this size a prompt's words barely show.
                fields.append(f"seed: {i * 1000 + self.revision[asset_id]}")
            if refs:
                fields.append(f"references: [{', '.join(refs)}]")
            lines.append(f"  {asset_id}: {{{', '.join(fields)}}}")
        (self.root / "flexforge.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def edit(self, rng: random.Random) -> list[str]:
        """Bump, revert or delete a few assets; returns what was done, for the log."""
        done = []
        self.deleted = set()
        for asset_id in rng.sample(self.ids, k=max(1, len(self.ids) // 5)):
            older = sorted(self.history[asset_id] - {self.revision[asset_id]})
            roll = rng.random()
            if roll < 0.5 or (roll < 0.8 and not older):
                self.revision[asset_id] = max(self.history[asset_id]) + 1
                self.history[asset_id].add(self.revision[asset_id])
                done.append(f"{asset_id}:new")
            elif roll < 0.8:
                self.revision[asset_id] = rng.choice(older)
                done.append(f"{asset_id}:revert")
            elif self.out(asset_id).exists():
                self.out(asset_id).unlink()
                self.deleted.add(asset_id)
                done.append(f"{asset_id}:delete")
        self.write()
        return done


@dataclass
class Snapshot:
    """What is on disk between two builds."""

    lock: dict[str, Any] | None
    lock_error: str | None
    outputs: dict[str, str]  # asset id -> sha256 of its output file
    journal: dict[str, set[str]]  # asset id -> journaled content keys
    key_records: set[str]
    tmp_files: list[str]


def snapshot(project: Project) -> Snapshot:
    root = project.root
    lock: dict[str, Any] | None = None
    error = None
    lock_path = root / "flexforge.lock"
    if lock_path.exists():
        try:
            lock = json.loads(lock_path.read_bytes())
        except ValueError as exc:
            error = f"does not parse: {exc}"
    outputs = {}
    for asset_id in project.ids:
        with suppress(FileNotFoundError):
            outputs[asset_id] = hashlib.sha256(project.out(asset_id).read_bytes()).hexdigest()
    journal: dict[str, set[str]] = {}
    for path in sorted((root / ".flexforge" / "journal").glob("*.json")):
        try:
            entry = json.loads(path.read_bytes())["body"]  # a sealed record (flexforge.records)
            journal.setdefault(str(entry["asset"]), set()).add(str(entry["key"]))
        except (OSError, ValueError, KeyError, TypeError):
            journal.setdefault("?", set()).add(path.stem)
    keys = {p.stem for p in (root / ".flexforge" / "keys").glob("*.json")}
    tmp = [
        str(p.relative_to(root)) for p in root.rglob("*.tmp") if ".flexforge" not in p.relative_to(root).parts
    ]
    return Snapshot(lock, error, outputs, journal, keys, tmp)


def check_lock(project: Project, snap: Snapshot, validator: Any, report: Report, trial: int) -> None:
    """The lock parses, matches its schema, and every entry's output has the recorded bytes."""
    report.lock_checks += 1
    if snap.lock_error is not None:
        report.violation(LOCK_INVALID, trial, snap.lock_error)
        return
    if snap.lock is None:
        return  # killed before the first asset finished: no lock is a valid state
    problems = sorted(validator.iter_errors(snap.lock), key=lambda e: list(e.absolute_path))
    if problems:
        report.violation(LOCK_INVALID, trial, problems[0].message)
        return
    for asset_id, entry in snap.lock["assets"].items():
        report.entries_checked += 1
        path = project.root / entry["out"]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            if asset_id not in project.deleted:  # not restored yet is fine: the user deleted it
                report.violation(OUTPUT_MISMATCH, trial, f"{asset_id}: {entry['out']} is missing")
            continue
        if digest != entry["sha256"]:
            report.violation(
                OUTPUT_MISMATCH,
                trial,
                f"{asset_id}: {entry['out']} is {digest[:12]}, the lock says {entry['sha256'][:12]}",
            )


# -- the emulator -----------------------------------------------------------------------------------


class Submissions:
    """Accepted submissions, read from the emulator's capture log as they arrive."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.seen = 0

    def _total(self) -> int:
        return sum(self.emu.stats()["responses"].get("submit", {}).values())

    def settle(self, quiet: float = 0.5) -> None:
        """Wait until a killed client's last requests have been answered: a submission whose
        bytes were sent before the kill may still be read and accepted by a busy emulator, and
        must count for the killed build, not the next one."""
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet:
            now = self._total()
            if now != last:
                last, since = now, time.monotonic()
            time.sleep(0.05)

    def new(self) -> list[dict[str, Any]]:
        """Accepted submission bodies since the last call (the log keeps the newest records)."""
        total = self._total()
        fresh = total - self.seen
        self.seen = total
        records = self.emu.requests()[-fresh:] if fresh else []
        if len(records) < fresh:
            raise RuntimeError("the emulator's capture log overflowed; raise capture_limit")
        return [r["body"] for r in records if r.get("status") == 200 and isinstance(r.get("body"), dict)]


# -- running flexforge ------------------------------------------------------------------------------


@dataclass
class Segment:
    """One build of a trial: what it submitted, and the disk it started from."""

    before: Snapshot
    after: Snapshot | None = None  # after its kill
    accepted: list[str] = field(default_factory=list)
    killed: bool = False


class Harness:
    def __init__(self, args: argparse.Namespace, emu: Any, workdir: Path) -> None:
        import jsonschema

        self.args = args
        self.rng = random.Random(args.seed)
        self.emu = emu
        self.workdir = workdir
        self.report = Report(args.seed, args.assets, args.edit_rate, args.signal.name)
        self.validator = jsonschema.Draft202012Validator(json.loads(LOCK_SCHEMA.read_text()))
        self.submissions = Submissions(emu)
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "FLEXFORGE_PROVIDER"},
            **emu.env(),
            **FAST_CLIENT,
            "BFL_API_KEY": SECRET,
        }
        self.duration = 2.0  # how long a full build takes; learnt from unkilled builds
        self.project: Project | None = None
        self.log_path = workdir / "builds.log"

    def command(self, project: Project, *args: str) -> list[str]:
        return [sys.executable, "-m", "flexforge", "-C", str(project.root), *args]

    def start_build(self, project: Project, *, capture: bool = False) -> subprocess.Popen[bytes]:
        """A build; its output goes to the shared log, or to a pipe when `capture`."""
        command = self.command(project, "build", "--provider", "emulator", "--jobs", str(self.args.jobs))
        if capture:
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=log, env=self.env)

    def plan(self, project: Project) -> dict[str, Any]:
        result = subprocess.run(
            self.command(project, "plan", "--json", "--provider", "emulator"),
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"plan failed: {result.stderr.decode(errors='replace')}")
        plan: dict[str, Any] = json.loads(result.stdout)
        return plan

    def log(self, message: str) -> None:
        if self.args.verbose:
            print(message, flush=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(f"== {message}\n")

    # -- one kill -------------------------------------------------------------------------------

    def kill_at_random(self, project: Project, proc: subprocess.Popen[bytes], work: int) -> str | None:
        """Signal the build at a random moment; None when it finished first. `work` is how many
        assets the plan said it would generate."""
        trigger: str = self.rng.choice(self.args.triggers)
        delay = self.rng.uniform(0.0, self.duration)
        threshold = self.rng.randint(1, max(1, work))
        lag = self.rng.uniform(0.0, 0.03)
        started = time.monotonic()
        journal = project.root / ".flexforge" / "journal"
        inodes = project.inodes()
        already = set(os.listdir(journal)) if journal.is_dir() else set()
        seen = set(already)
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > BUILD_TIMEOUT:
                break
            if trigger == "time":
                fire = elapsed >= delay
            elif trigger == "journal":  # the threshold-th task journaled since the start
                seen.update(os.listdir(journal) if journal.is_dir() else ())
                fire = len(seen - already) >= threshold
            else:
                now = project.inodes()  # outputs written (renamed into place) since the start
                fire = sum(1 for i, ino in now.items() if ino != inodes.get(i)) >= threshold
            if fire:
                time.sleep(lag)
                break
            time.sleep(0.003)
        if proc.poll() is not None:
            return None
        sig: signal.Signals = self.args.signal
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.report.violation(NO_EXIT, -1, f"still running 60 s after {sig.name}")
            proc.kill()
            proc.wait()
        if sig != signal.SIGKILL and proc.returncode == 0:
            return None  # it finished as the signal came: not an interrupted build
        # 128+SIG: flexforge stopped cleanly (130 for SIGINT, 143 for SIGTERM). -SIG: the signal
        # came before Python could handle it (during start-up), which a shell reports as 128+SIG
        # too; 1: an asset had failed.
        if sig != signal.SIGKILL and proc.returncode not in (128 + sig, 1, -sig):
            self.report.violation(NO_EXIT, -1, f"exit {proc.returncode} after {sig.name}, not {128 + sig}")
        return trigger

    # -- one trial ------------------------------------------------------------------------------

    def new_trial(self, trial: int) -> Project:
        previous = self.project
        if previous is not None and self.rng.random() < self.args.edit_rate:
            self.log(f"trial {trial}: edit {' '.join(previous.edit(self.rng))}")
            return previous
        if previous is not None and not self.args.keep:
            shutil.rmtree(previous.root, ignore_errors=True)
        nonce = f"t{trial:04d}x{self.rng.randrange(16**6):06x}"
        project = Project(
            self.workdir / f"project-{trial:04d}", nonce, self.args.assets, self.args.unseeded_every
        )
        self.log(f"trial {trial}: fresh project {project.root.name}")
        return project

    def trial(self, trial: int, kills_left: int) -> int:
        """Run one trial; returns the number of kills it made."""
        report = self.report
        project = self.project = self.new_trial(trial)
        needed = {a["id"] for a in self.plan(project)["assets"] if a["action"] in ("create", "regenerate")}
        self.submissions.new()  # whatever came before belongs to earlier trials
        segments: list[Segment] = []
        state = snapshot(project)
        kills = 0
        while kills < min(3, kills_left) and (kills == 0 or self.rng.random() < self.args.rekill):
            segment = Segment(before=state)
            segments.append(segment)
            proc = self.start_build(project)
            started = time.monotonic()
            trigger = self.kill_at_random(project, proc, len(needed))
            segment.accepted = self._accepted(project)
            if trigger is None:  # a whole build, unkilled: how long kills may wait from now on
                report.finished_before_kill += 1
                self.duration = max(0.3, time.monotonic() - started)
                self.log(f"trial {trial}: the build finished before the kill")
                if proc.returncode != 0:
                    report.violation(RESUME_FAILED, trial, f"exit {proc.returncode}; see {self.log_path}")
                break
            kills += 1
            report.kills_by_trigger[trigger] += 1
            if trigger == "time":
                self.duration *= 1.05  # drift up, so that late moments get their turn too
            segment.killed = True
            state = segment.after = snapshot(project)
            report.tmp_left_after_kill += len(state.tmp_files)
            check_lock(project, state, self.validator, report, trial)
            self.log(f"trial {trial}: killed ({trigger}) after {time.monotonic() - started:.2f}s")
            if self.args.sabotage_journal:  # for the harness's own test: it must notice
                shutil.rmtree(project.root / ".flexforge" / "journal", ignore_errors=True)
        if not segments or segments[-1].killed:
            segment = Segment(before=state)
            segments.append(segment)
            proc = self.start_build(project, capture=True)
            try:
                output, _ = proc.communicate(timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            with self.log_path.open("ab") as log:
                log.write(output)
            segment.accepted = self._accepted(project)
            if proc.returncode != 0:
                tail = output.decode(errors="replace").strip().splitlines()[-3:]
                report.violation(RESUME_FAILED, trial, f"exit {proc.returncode}: {' | '.join(tail)}")
        self._final_checks(trial, project, segments, needed)
        return kills

    def _accepted(self, project: Project) -> list[str]:
        bodies = self.submissions.new()
        self.report.submissions += len(bodies)
        return [project.asset_of(str(b.get("prompt", ""))) or "?" for b in bodies]

    def _final_checks(self, trial: int, project: Project, segments: list[Segment], needed: set[str]) -> None:
        report = self.report
        final = snapshot(project)
        check_lock(project, final, self.validator, report, trial)
        final_keys = {a: e["key"] for a, e in (final.lock or {}).get("assets", {}).items()}
        start = segments[0].before
        counts: Counter[str] = Counter()
        for j, segment in enumerate(segments):
            for asset_id in segment.accepted:
                counts[asset_id] += 1
                if asset_id not in needed:
                    report.violation(UNNEEDED, trial, f"{asset_id} (planned up to date or restorable)")
                elif counts[asset_id] > 1:
                    report.resubmissions_checked += 1
                    earlier = segments[:j] + ([segment] if segment.accepted.count(asset_id) > 1 else [])
                    kind = _resubmission(asset_id, earlier, segment, start, final_keys.get(asset_id))
                    if kind is None and self.args.signal == signal.SIGKILL:
                        report.window += 1
                    elif kind is None:  # a graceful stop must journal what it submitted
                        report.violation(WINDOW_ON_SIGNAL, trial, asset_id)
                    else:
                        report.violation(kind, trial, asset_id)
        report.tmp_left_after_resume += len(final.tmp_files)
        report.tmp_examples = sorted({*report.tmp_examples, *final.tmp_files})[:5]
        if final.journal:
            report.stale_journal_after_resume += sum(len(keys) for keys in final.journal.values())
        plan = self.plan(project)
        pending = {a["id"]: a["action"] for a in plan["assets"] if a["action"] != "none"}
        if pending or plan.get("orphaned"):
            report.violation(NOT_CONVERGED, trial, f"plan after the build: {pending}")
            self._converge(project, pending)
        for path in project.root.rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                report.violation(KEY_LEAKED, trial, str(path.relative_to(project.root)))

    def _converge(self, project: Project, pending: dict[str, str]) -> None:
        """Bring a project back to a clean state so later trials test something: drifted outputs
        are accepted (what a user would do), then one more build."""
        for asset_id, action in pending.items():
            if action == "drifted":
                self.report.false_drift_accepted += 1
                subprocess.run(self.command(project, "accept", asset_id), env=self.env, capture_output=True)
        proc = self.start_build(project)
        proc.wait(timeout=BUILD_TIMEOUT)
        self.report.submissions += len(self.submissions.new())

    def run(self) -> Report:
        started = time.monotonic()
        trial = 0
        while self.report.kills < self.args.kills:
            self.report.kills += self.trial(trial, self.args.kills - self.report.kills)
            trial += 1
            self.report.trials = trial
            if self.args.verbose:
                print(
                    f"  {self.report.kills}/{self.args.kills} kills, {len(self.report.violations)} violations"
                )
        stats = self.emu.stats()
        self.report.emulator_duplicates = stats["duplicates"]
        self.report.faults_injected = sum(stats["faults"].values())
        if stats["duplicates"] > self.report.window:
            self.report.violation(
                UNEXPLAINED_DUPLICATES,
                -1,
                f"{stats['duplicates']} duplicate bodies, {self.report.window} explained by the window",
            )
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report


def _resubmission(
    asset_id: str, earlier: list[Segment], segment: Segment, start: Snapshot, final_key: str | None
) -> str | None:
    """Why a second accepted submission for `asset_id` in one trial is a violation, or None when
    it is the inherent case: the build that first submitted it was killed after the API accepted
    the task and before flexforge could journal it, and no build since learnt of the task."""
    before = segment.before
    produced = before.outputs.get(asset_id)
    if final_key in before.key_records or (produced is not None and produced != start.outputs.get(asset_id)):
        return REGENERATED  # its output was made, and cached, in this trial already
    if final_key is not None and final_key in before.journal.get(asset_id, set()):
        return RESUBMITTED
    last = max(k for k, seg in enumerate(earlier) if asset_id in seg.accepted)
    if not earlier[last].killed:
        return TWICE
    for seg in earlier[last:]:
        assert seg.after is not None
        if seg.after.journal.get(asset_id, set()) - seg.before.journal.get(asset_id, set()):
            return RESUBMITTED  # journaled by a killed build, yet paid for again
    return None


# -- output -----------------------------------------------------------------------------------------


def summary(report: Report) -> str:
    counts = Counter(v.kind for v in report.violations)
    triggers = ", ".join(f"{k} {n}" for k, n in sorted(report.kills_by_trigger.items()))
    rows = [
        (f"{report.signal}s sent mid-build", f"{report.kills} ({triggers})", ""),
        ("builds that finished before their kill", str(report.finished_before_kill), ""),
        ("trials (each ends with an unkilled build)", str(report.trials), ""),
        (LOCK_INVALID, str(report.lock_checks), str(counts[LOCK_INVALID])),
        (OUTPUT_MISMATCH, str(report.entries_checked), str(counts[OUTPUT_MISMATCH])),
        ("accepted submissions (paid tasks)", str(report.submissions), ""),
        (REGENERATED, str(report.resubmissions_checked), str(counts[REGENERATED])),
        (RESUBMITTED, str(report.resubmissions_checked), str(counts[RESUBMITTED])),
        (TWICE, str(report.resubmissions_checked), str(counts[TWICE])),
        (UNNEEDED, str(report.submissions), str(counts[UNNEEDED])),
        (RESUME_FAILED, str(report.trials), str(counts[RESUME_FAILED])),
        (NOT_CONVERGED, str(report.trials), str(counts[NOT_CONVERGED])),
        (UNEXPLAINED_DUPLICATES, str(report.emulator_duplicates), str(counts[UNEXPLAINED_DUPLICATES])),
        (KEY_LEAKED, str(report.trials), str(counts[KEY_LEAKED])),
        (NO_EXIT, str(report.kills), str(counts[NO_EXIT])),
        (WINDOW_ON_SIGNAL, str(report.resubmissions_checked), str(counts[WINDOW_ON_SIGNAL])),
        ("inherent: SIGKILL inside the submit->journal window", str(report.window), "-"),
        ("note: stray *.tmp beside outputs after a kill", str(report.tmp_left_after_kill), "-"),
        ("note: ... still there after the next build", str(report.tmp_left_after_resume), "-"),
        ("note: journal entries left after a clean build", str(report.stale_journal_after_resume), "-"),
        ("note: false drifts accepted to carry on", str(report.false_drift_accepted), "-"),
        ("transient faults injected by the emulator", str(report.faults_injected), ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"crash harness: seed {report.seed}, {report.assets} assets a project, edit rate "
        f"{report.edit_rate}, {report.seconds}s",
        f"{'check':<{width}}  {'cases':>14}  violations",
        *(f"{name:<{width}}  {cases:>14}  {bad}" for name, cases, bad in rows),
    ]
    total = len(report.violations)
    lines.append(f"{'TOTAL VIOLATIONS':<{width}}  {'':>14}  {total}")
    if report.tmp_examples:
        lines.append(f"  temp files left after a build, e.g.: {', '.join(report.tmp_examples)}")
    for v in report.violations[:20]:
        lines.append(f"  trial {v.trial}: {v.kind}: {v.detail}")
    if total > 20:
        lines.append(f"  ... and {total - 20} more")
    return "\n".join(lines)


@contextmanager
def emulator(seed: int, latency: tuple[float, float]) -> Iterator[Any]:
    from flexforge.emulator.testing import running_emulator

    low, high = latency
    with running_emulator(
        latency=(low + high) / 2,
        jitter=(high - low) / 2,
        faults=FAULTS,
        seed=seed,
        accepted_keys=(SECRET,),
        capture_limit=5000,
        url_lifetime=600.0,
    ) as emu:
        yield emu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs to send (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill moments and fault dice")
    parser.add_argument("--assets", type=int, default=30, help="assets per project (default 30)")
    parser.add_argument("--jobs", type=int, default=8, help="flexforge build --jobs (default 8)")
    parser.add_argument(
        "--edit-rate",
        type=float,
        default=0.0,
        help="chance that a trial edits the last project (regenerate/restore) instead of a fresh one",
    )
    parser.add_argument(
        "--unseeded-every",
        type=int,
        default=5,
        metavar="K",
        help="every K-th asset has no seed in the manifest (drawn and pinned); 0: none (default 5)",
    )
    parser.add_argument(
        "--triggers",
        type=lambda text: text.split(","),
        default=["time", "time", "journal", "output"],
        help="kill moments to draw from: time (random), journal (N tasks journaled), output (N new "
        "outputs); default time,time,journal,output",
    )
    parser.add_argument(
        "--latency",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(0.05, 0.3),
        help="the emulator's task latency range in seconds (default 0.05,0.3)",
    )
    parser.add_argument("--rekill", type=float, default=0.35, help="chance to kill a resumed build too")
    parser.add_argument(
        "--signal",
        type=lambda name: signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"],
        default=signal.SIGKILL,
        help="KILL (default), INT or TERM: with INT/TERM flexforge must stop cleanly and journal "
        "every task it submitted, so a resubmission after one is a violation",
    )
    parser.add_argument("--workdir", type=Path, help="where projects go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every project for inspection")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--sabotage-journal", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background (nohup, `&`): SIGINT is ignored, and an ignored signal stays
        # ignored in every child, so the builds would never see the SIGINTs sent to them.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # A killed client makes the emulator log "Connection lost" tracebacks: expected here.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="flexforge-crash-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        with emulator(args.seed, args.latency) as emu:
            report = Harness(args, emu, base).run()
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return report


def _unignore_stop_signals() -> None:
    """Started as a script's background job, this process inherits SIGINT and SIGQUIT ignored,
    and so would every build it starts: flexforge keeps an inherited ignored signal ignored, and
    the --signal INT trials would measure nothing. Builds start as from a terminal instead."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    _unignore_stop_signals()
    report = run(argv)
    print(summary(report))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
