"""Real builds over loopback HTTP: the bfl client, the engine and the journal against the emulator."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from flexforge.emulator.testing import RunningEmulator
from tests.helpers import Project, Run
from tests.support.emulator import SECRET, serve_builds
from tests.support.spawn import spawn_flexforge


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def build(project: Project, *args: str) -> Run:
    result = project.run("build", "--provider", "emulator", *args)
    assert "Traceback" not in result.stderr
    return result


def manifest(project: Project, n: int, *, chain_every: int = 0, extra: str = "") -> None:
    lines = ["version: 1", "defaults: {width: 256, height: 256}", "assets:"]
    for i in range(n):
        refs = f", references: [a{i - 1}]" if chain_every and i % chain_every else ""
        lines.append(f'  a{i}: {{prompt: "asset {i} {extra}", seed: {i}{refs}}}')
    project.write("flexforge.yaml", "\n".join(lines) + "\n")


def outcomes(stderr: str, kind: str) -> set[str]:
    return set(re.findall(rf"^  . (\S+): {kind}", stderr, re.M))


def test_build_records_tasks_costs_and_submits_each_once(project: Project, emu: RunningEmulator) -> None:
    manifest(project, 6, chain_every=3)
    result = build(project)
    assert result.exit_code == 0, result.stderr
    lock = project.lock()["assets"]
    assert len(lock) == 6
    for entry in lock.values():
        assert entry["provider"] == "emulator" and entry["generator"] == "emulator"
        assert entry["task_id"] and entry["cost_usd"] > 0
    ledger = (project.root / ".flexforge/ledger.jsonl").read_text().splitlines()
    assert {json.loads(line)["body"]["task_id"] for line in ledger} == {e["task_id"] for e in lock.values()}
    stats = emu.stats()
    assert (stats["submissions"], stats["duplicates"]) == (6, 0)
    assert "actual $" in result.stderr
    assert not list((project.root / ".flexforge/journal").glob("*.json"))
    assert build(project).stdout.startswith("Up to date")
    assert emu.stats()["submissions"] == 6
    status = project.run("status", "--json", "--provider", "emulator").json()
    assert all(a["up_to_date"] for a in status["assets"])
    assert status["total_cost_usd"] == pytest.approx(sum(e["cost_usd"] for e in lock.values()))


def test_moderation_fails_the_asset_and_its_dependents(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, moderate_request=("forbidden",)) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 256, height: 256}
            assets:
              bad: {prompt: "a forbidden poster", seed: 1}
              child: {prompt: "edit of image 1", seed: 2, references: [bad]}
              other: {prompt: "fine", seed: 3}
        """)
        result = build(project, "--jobs", "1")
        assert result.exit_code == 1
        assert "failed: bad: " in result.stderr and "Moderat" in result.stderr
        assert "skipped: child: needs bad, which failed" in result.stderr
        assert "skipped: other: not started" in result.stderr  # stops new submissions by default
        result = build(project, "--jobs", "1", "--keep-going")
        assert result.exit_code == 1
        assert "other" in outcomes(result.stderr, "generated")
        assert "skipped: child: needs bad" in result.stderr
        assert set(project.lock()["assets"]) == {"other"}
        assert emu.stats()["charged_credits"] > 0


def test_out_of_credits_stops_the_run_and_keeps_finished_work(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, credits=12.0) as emu:  # about two 256x256 flex tasks at 5 credits
        manifest(project, 5)
        result = build(project, "--jobs", "1", "--keep-going", "--ignore-credits")
        assert result.exit_code == 1
        assert "credit" in result.stderr.lower()
        built = set(project.lock()["assets"])
        assert len(built) == 2
        assert emu.stats()["submissions"] == 2
        # fatal: stops new submissions even with --keep-going
        assert len(re.findall(r"^  skipped: \S+: not started", result.stderr, re.M)) == 2


def test_cost_reads_the_ledger_while_the_manifest_is_broken(project: Project, emu: RunningEmulator) -> None:
    """Spend is asked about most mid-merge or mid-edit: a manifest that does not validate (here,
    conflict markers) still lets `cost` say what the API billed."""
    manifest(project, 2)
    assert build(project).exit_code == 0
    paid = project.run("cost", "--json").json()
    assert paid["images"] == 2 and paid["total_usd"] > 0
    project.write("flexforge.yaml", "<<<<<<< HEAD\nversion: 1\n=======\n>>>>>>> side\n")
    assert project.run("validate").exit_code != 0
    again = project.run("cost", "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json() == paid


def test_max_cost_never_starts_a_task_past_the_limit(project: Project, emu: RunningEmulator) -> None:
    manifest(project, 4)
    plan = project.run("plan", "--json", "--provider", "emulator").json()
    each = plan["assets"][0]["estimated_cost_usd"]
    result = build(project, "--jobs", "1", "--max-cost", f"{each * 2.5:.4f}")
    assert result.exit_code == 1
    assert len(project.lock()["assets"]) == 2
    assert len(re.findall(r"^  skipped: \S+: not started: its estimate", result.stderr, re.M)) == 2
    assert emu.stats()["submissions"] == 2


def test_wrong_key_is_one_clear_line_and_never_printed(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, accepted_keys=("another-key-entirely",)):
        manifest(project, 3)
        result = build(project)
        assert result.exit_code == 1
        assert "FLEXFORGE_EMULATOR_KEY" in result.stderr
        assert SECRET not in result.stderr + result.stdout
        assert emu_free_of_secret(project)


def emu_free_of_secret(project: Project) -> bool:
    for path in project.root.rglob("*"):
        if path.is_file() and SECRET.encode() in path.read_bytes():
            pytest.fail(f"the key leaked into {path}")
    return True


def test_the_key_never_reaches_any_artifact(project: Project, emu: RunningEmulator) -> None:
    manifest(project, 4, chain_every=2)
    outputs = [
        build(project),
        project.run("plan", "--json", "--provider", "emulator"),
        project.run("status", "--json", "--provider", "emulator"),
        project.run("explain", "a1", "--provider", "emulator"),
        project.run("-vv", "graph"),
    ]
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr
    assert emu_free_of_secret(project)


def test_transient_faults_complete_every_asset_without_paying_twice(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = {
        "submit:429": 0.1,
        "submit:503": 0.1,  # ambiguous 5xx are not retried: tests/test_submit_policy.py
        "poll:500": 0.1,
        "poll:503": 0.05,
        "poll:drop": 0.05,
        "download:500": 0.1,
        "download:truncate": 0.1,
    }
    # As in scripts/soak.py: at 20 % faults per poll, six in a row on one of ~1,000 polls (more
    # under load) would fail an asset for good reason now and then; that is not what this measures.
    monkeypatch.setenv("FLEXFORGE_MAX_RETRIES", "10")
    with serve_builds(monkeypatch, faults=faults, seed=7, latency=0.02) as emu:
        manifest(project, 100, chain_every=10)
        result = build(project, "--jobs", "24")
        assert result.exit_code == 0, result.stderr[-2000:]
        assert len(project.lock()["assets"]) == 100
        stats = emu.stats()
        assert stats["duplicates"] == 0 and stats["submissions"] == 100
        assert sum(stats["faults"].values()) > 20  # the faults really happened


def build_until_journaled(project: Project, tasks: int) -> subprocess.Popen[str]:
    """A build in a child process, returned once `tasks` paid tasks are in its journal."""
    proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "emulator")
    journal = project.root / ".flexforge/journal"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(journal.glob("*.json"))) < tasks:
        time.sleep(0.02)
    return proc


def test_sigkill_after_submit_resumes_the_same_tasks(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, latency=3.0) as emu:
        manifest(project, 5)
        proc = build_until_journaled(project, 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        journal = project.root / ".flexforge/journal"
        entries = [json.loads(p.read_text())["body"] for p in journal.glob("*.json")]
        assert len(entries) == 5
        assert {"asset", "key", "provider", "task_id", "polling_url", "submitted_at"} <= set(entries[0])
        assert emu.stats()["submissions"] == 5
        assert not (project.root / "flexforge.lock").exists()

        result = build(project)
        assert result.exit_code == 0, result.stderr
        assert emu.stats()["submissions"] == 5  # nothing paid twice
        assert {e["task_id"] for e in project.lock()["assets"].values()} == {e["task_id"] for e in entries}
        assert not list(journal.glob("*.json"))


def test_ctrl_c_keeps_the_journal_and_the_next_build_resumes(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, latency=2.0) as emu:
        manifest(project, 3)
        proc = build_until_journaled(project, 3)
        journal = project.root / ".flexforge/journal"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr  # 128 + SIGINT
        assert "journaled" in stderr
        assert len(list(journal.glob("*.json"))) == 3
        assert build(project).exit_code == 0
        assert emu.stats()["submissions"] == 3


def test_a_chains_next_link_is_submitted_while_its_upstreams_bookkeeping_goes_on(
    project: Project, emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an image and its key record are in the cache (a restart restores it for free), the
    next link starts: it does not wait for the upstream's output file, ledger line and journal
    removal. The upstream's ledger write here waits until the next link has been submitted;
    had the link waited for it, neither would go on."""
    from flexforge.store import Store

    manifest(project, 2, chain_every=2)  # a1 is made from a0's image
    real_append = Store.ledger_append
    seen: dict[str, int] = {}

    def append(self: Store, entry: object) -> None:
        asset = getattr(entry, "asset", "")
        if asset == "a0":
            deadline = time.monotonic() + 60  # a guard against a hang, not a timing
            while emu.stats()["submissions"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen[asset] = emu.stats()["submissions"]
        real_append(self, entry)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "ledger_append", append)
    result = build(project)

    assert result.exit_code == 0, result.stderr
    assert seen == {"a0": 2}  # a1 was submitted while a0's ledger line waited
    ledger = (project.root / ".flexforge/ledger.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["body"]["asset"] for line in ledger) == ["a0", "a1"]
    assert set(project.lock()["assets"]) == {"a0", "a1"}
    assert (project.root / project.lock()["assets"]["a0"]["out"]).exists()
    assert emu.stats()["duplicates"] == 0
