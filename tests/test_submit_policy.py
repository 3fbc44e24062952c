"""A submission that may have reached the API is never replayed blindly, and is counted."""

from __future__ import annotations

import re

import pytest

from tests.helpers import Project, Run
from tests.support.emulator import serve_builds

AMBIGUOUS = {"submit:500": 0.15, "submit:502": 0.05, "submit:504": 0.05, "submit:drop": 0.1}


def manifest(project: Project, n: int) -> None:
    lines = ["version: 1", "defaults: {width: 128, height: 128}", "assets:"]
    lines += [f'  a{i}: {{prompt: "asset {i}", seed: {i}}}' for i in range(n)]
    project.write("flexforge.yaml", "\n".join(lines) + "\n")


def build(project: Project, *args: str) -> Run:
    result = project.run("build", "--provider", "emulator", "--keep-going", *args)
    assert "Traceback" not in result.stderr
    return result


def summary_count(stderr: str) -> int:
    found = re.search(r"^(\d+) submissions? may have been charged with no answer", stderr, re.M)
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("replay", [False, True])
def test_ambiguous_failures_that_create_tasks_pay_at_most_once_per_asset_per_run(
    project: Project, monkeypatch: pytest.MonkeyPatch, replay: bool
) -> None:
    if replay:
        monkeypatch.setenv("FLEXFORGE_SUBMIT_REPLAY", "1")
    manifest(project, 40)
    with serve_builds(monkeypatch, faults=AMBIGUOUS, submit_fault_task_rate=0.5, seed=3) as emu:
        result = build(project, "--jobs", "8")

        stats = emu.stats()
        assert stats["ambiguous_submits"] > 5  # the faults really happened
        assert stats["unanswered_tasks"] > 0  # and some of them made (and charged) a task
        assert max(stats["per_body"].values()) <= (2 if replay else 1)
        assert summary_count(result.stderr) == stats["ambiguous_submits"]
        failed = set(re.findall(r"^  failed: (\S+): .*may have been charged", result.stderr, re.M))
        built = set(project.lock()["assets"])
        assert len(failed) + len(built) == 40
        if not replay:
            assert len(failed) == stats["ambiguous_submits"]
        worst = re.search(r"may have been charged with no answer \(worst case \$([\d.]+)\)", result.stderr)
        assert worst is not None and float(worst.group(1)) > 0

        # The next run is a new run: each failed asset is submitted once more, and that is all.
        monkeypatch.delenv("FLEXFORGE_SUBMIT_REPLAY", raising=False)
        emu.configure(faults={})
        again = build(project)
        assert again.exit_code == 0, again.stderr
        assert len(project.lock()["assets"]) == 40
        assert emu.stats()["submissions"] - stats["submissions"] == len(failed)


def test_max_cost_keeps_the_reservation_of_a_submission_that_may_have_been_charged(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest(project, 4)
    with serve_builds(monkeypatch, script=("submit:500",), submit_fault_task_rate=1.0) as emu:
        each = project.run("plan", "--json", "--provider", "emulator").json()["assets"][0][
            "estimated_cost_usd"
        ]

        result = build(project, "--jobs", "1", "--max-cost", f"{each * 2.5:.4f}")

        # a0 may have been paid: its estimate stays reserved, so only a1 fits beside it.
        assert result.exit_code == 1
        assert list(project.lock()["assets"]) == ["a1"]
        assert len(re.findall(r"^  skipped: \S+: not started: its estimate", result.stderr, re.M)) == 2
        assert summary_count(result.stderr) == 1
        assert emu.stats()["submissions"] == 2  # a0's task, made behind the 500, and a1's
