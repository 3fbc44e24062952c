"""Money under signals: every stop signal, repeated or mixed, leaves each paid task kept or journaled,
and the build says which, naming any task it could not journal. Real processes, real signals."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.helpers import Project, Run
from tests.support.emulator import SECRET, serve_builds
from tests.support.spawn import spawn_flexforge, wait_for

ONE_ASSET = """
    version: 1
    defaults: {width: 64, height: 64}
    assets:
      a: {prompt: "slow to answer", seed: 1}
"""


def build(project: Project, *args: str) -> Run:
    result = project.run("build", "--provider", "emulator", *args)
    assert "Traceback" not in result.stderr
    return result


def journal(project: Project) -> list[dict[str, object]]:
    folder = project.root / ".flexforge" / "journal"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def read_until(proc: subprocess.Popen[str], fragment: str) -> list[str]:
    """stderr lines up to the first holding `fragment` (the build reacting to a signal)."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if fragment in line:
            return lines
    pytest.fail(f"the build never said {fragment!r}: {''.join(lines)}")


def finish(proc: subprocess.Popen[str], seen: list[str]) -> str:
    _, err = proc.communicate(timeout=90)
    return "".join(seen) + err


STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]


@pytest.mark.parametrize("sig", STOPS, ids=[s.name for s in STOPS])
def test_every_stop_signal_journals_the_submission_whose_answer_is_on_its_way(
    project: Project, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    """SIGHUP (a closed terminal or SSH session) and SIGQUIT (Ctrl-\\) stop a build as SIGINT and
    SIGTERM do: no new submissions, the answer on its way awaited and journaled, exit 128 + N."""
    # The emulator creates (and charges) the task, then holds its answer for 1.5 s.
    with serve_builds(monkeypatch, script=("submit:hang",), hang_seconds=1.5, latency=0.2) as emu:
        project.manifest(ONE_ASSET)
        proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "emulator")
        wait_for(lambda: emu.stats()["submissions"] == 1, "the task to be created")
        proc.send_signal(sig)
        seen = read_until(proc, "stopping")
        stderr = finish(proc, seen)
        assert proc.returncode == 128 + sig, stderr
        assert f"stopping ({sig.name}): no new submissions; waiting for the answer to 1 submission" in stderr
        assert f"interrupted ({sig.name})" in stderr and "1 task in flight is journaled (a)" in stderr
        assert "Traceback" not in stderr and SECRET not in stderr
        assert len(journal(project)) == 1

        assert build(project).exit_code == 0
        assert emu.stats()["submissions"] == 1  # resumed, not paid again
        assert journal(project) == []


PAIRS = [
    (signal.SIGINT, signal.SIGINT),  # a second Ctrl-C
    (signal.SIGINT, signal.SIGTERM),  # how CI cancels: SIGINT, then SIGTERM
    (signal.SIGTERM, signal.SIGTERM),
    (signal.SIGHUP, signal.SIGINT),
]


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a.name}-then-{b.name}" for a, b in PAIRS])
def test_a_further_signal_during_the_drain_never_abandons_a_submission(
    project: Project, monkeypatch: pytest.MonkeyPatch, first: signal.Signals, second: signal.Signals
) -> None:
    """Regression: a second Ctrl-C raised KeyboardInterrupt out of the event loop, and a SIGTERM
    after a SIGINT cancelled the wait for answers: the task was charged, never journaled, paid again."""
    with serve_builds(monkeypatch, script=("submit:hang",), hang_seconds=2.0, latency=0.2) as emu:
        project.manifest(ONE_ASSET)
        proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "emulator")
        wait_for(lambda: emu.stats()["submissions"] == 1, "the task to be created")
        proc.send_signal(first)
        seen = read_until(proc, "stopping")  # the drain has begun
        proc.send_signal(second)
        seen += read_until(proc, "again")
        proc.send_signal(second)  # and once more for luck
        stderr = finish(proc, seen)
        assert proc.returncode == 128 + first, stderr
        assert f"{second.name} again; waiting for the answer to 1 submission already sent (a)" in stderr
        assert "1 task in flight is journaled (a)" in stderr and "not journaled" not in stderr
        assert "Traceback" not in stderr
        assert len(journal(project)) == 1

        assert build(project).exit_code == 0
        assert emu.stats()["submissions"] == 1


def test_a_submission_unanswered_when_the_drain_ends_is_named_and_never_called_journaled(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain is bounded (FLEXFORGE_HTTP_TIMEOUT): when an answer does not come in time, the
    build says the asset's task may have been charged, and does not claim it journaled."""
    with serve_builds(monkeypatch, script=("submit:hang",), hang_seconds=8.0, latency=0.05) as emu:
        monkeypatch.setenv("FLEXFORGE_HTTP_TIMEOUT", "30")
        project.manifest(ONE_ASSET)
        proc = spawn_flexforge(
            "-C", str(project.root), "build", "--provider", "emulator", env={"FLEXFORGE_HTTP_TIMEOUT": "1"}
        )
        wait_for(lambda: emu.stats()["submissions"] >= 1, "the task to be created")
        proc.send_signal(signal.SIGTERM)
        stderr = finish(proc, [])
        assert proc.returncode == 143, stderr
        assert "interrupted (SIGTERM)" in stderr
        assert "not journaled: a: its submission got no answer before the build stopped" in stderr
        assert "journaled (a)" not in stderr and "Traceback" not in stderr
        assert journal(project) == []


def test_an_inherited_ignored_sighup_is_respected(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nohup flexforge build`: a build started with SIGHUP ignored goes on when its terminal closes."""
    with serve_builds(monkeypatch, latency=0.6) as emu:
        project.manifest(ONE_ASSET)
        args = ("-C", str(project.root), "build", "--provider", "emulator")
        proc = spawn_flexforge(*args, ignored=("SIGHUP",))
        wait_for(lambda: emu.stats()["submissions"] == 1, "the task to be created")
        proc.send_signal(signal.SIGHUP)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "stopping" not in stderr
        assert (project.root / "flexforge.lock").exists()
