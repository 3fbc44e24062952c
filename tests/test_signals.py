"""Money under signals: every stop signal, repeated or mixed, leaves each paid task kept or journaled,
and the build says which, naming any task it could not journal. Real processes, real signals."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess

import pytest

from flexforge.store import Store
from tests.helpers import Project, Run
from tests.support.emulator import SECRET, serve_builds
from tests.support.mounts import fill, remount_read_only, tmpfs
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
        # Its answer timed out after the body was sent: counted as a submission that may have
        # been charged (flexforge.providers._http, "Submitting"), naming the asset.
        assert "1 submission may have been charged with no answer (worst case $0.05): a;" in stderr
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


# -- a journal that cannot be written ----------------------------------------------------------------


def test_a_journal_write_that_fails_keeps_the_task_fetches_it_and_names_it(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC at the journal write (after the pre-flight check passed): the paid task stays in
    memory, is polled and downloaded; its id and polling URL are printed, never the key."""

    def full_disk(self: Store, entry: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.dir / "journal"))

    monkeypatch.setattr(Store, "journal_put", full_disk)
    with serve_builds(monkeypatch) as emu:
        project.manifest(ONE_ASSET)
        result = build(project)
        assert result.exit_code == 0, result.stderr
        (task_id,) = {e["task_id"] for e in project.lock()["assets"].values()}
        assert f"task {task_id} could not be journaled (No space left on device)" in result.stderr
        assert f"get_result?id={task_id}" in result.stderr  # where to fetch it
        assert SECRET not in result.stdout + result.stderr
        assert emu.stats()["submissions"] == 1


def test_no_paid_submission_when_the_journal_cannot_be_written(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-flight check: a file where the journal folder belongs (or any write failure there)
    stops the build before it pays for anything."""
    with serve_builds(monkeypatch) as emu:
        project.manifest(ONE_ASSET)
        (project.root / ".flexforge").mkdir()
        (project.root / ".flexforge" / "journal").write_text("not a folder")
        result = build(project)
        assert result.exit_code == 1
        assert "error: .flexforge/journal is not a folder" in result.stderr
        assert emu.stats()["submissions"] == 0


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_journal_on_a_full_or_read_only_disk_stops_the_build_before_paying(
    project: Project, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    with serve_builds(monkeypatch) as emu, tmpfs(project.root / ".flexforge" / "journal") as journal_dir:
        project.manifest(ONE_ASSET)
        if fault == "full":
            fill(journal_dir)
        else:
            remount_read_only(journal_dir)
        result = build(project)
        assert result.exit_code == 1, result.stderr
        reason = "No space left on device" if fault == "full" else "Read-only file system"
        assert f"cannot write to .flexforge/journal ({reason})" in result.stderr
        assert emu.stats()["submissions"] == 0


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("stop", [None, signal.SIGTERM], ids=["runs-on", "stopped"])
def test_a_disk_that_fills_after_the_check_keeps_the_paid_task(
    project: Project, monkeypatch: pytest.MonkeyPatch, fault: str, stop: signal.Signals | None
) -> None:
    """The journal's disk fills (or turns read-only) while the answer is on its way: a build that
    runs on fetches the task; one stopped meanwhile names the task id and where its result is."""
    with (
        serve_builds(monkeypatch, script=("submit:hang",), hang_seconds=1.5, latency=0.1) as emu,
        tmpfs(project.root / ".flexforge" / "journal") as journal_dir,
    ):
        project.manifest(ONE_ASSET)
        proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "emulator")
        wait_for(lambda: emu.stats()["submissions"] == 1, "the task to be created")
        if fault == "full":
            fill(journal_dir)
        else:
            remount_read_only(journal_dir)
        seen = []
        if stop is not None:
            proc.send_signal(stop)
            seen = read_until(proc, "stopping")
        stderr = finish(proc, seen)
        assert "Traceback" not in stderr and SECRET not in stderr
        match = re.search(r"task (\S+) could not be journaled \(([^)]+)\)", stderr)
        assert match, stderr
        task_id = match.group(1)
        if stop is None:
            assert proc.returncode == 0, stderr
            assert project.lock()["assets"]["a"]["task_id"] == task_id
        else:
            assert proc.returncode == 143, stderr
            assert f"not journaled: a: task {task_id} is paid for" in stderr
            assert f"get_result?id={task_id}" in stderr
            assert "journaled (a)" not in stderr
        assert journal(project) == []


def test_a_paid_image_is_durable_in_the_cache_before_its_journal_entry_goes(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after the journal entry is removed must find the image in the cache:
    its bytes and its folder entry are fsynced first, or the next build would pay again."""
    events: list[str] = []
    real_fsync, real_remove = os.fsync, Store.journal_remove

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def journal_remove(self: Store, key: str) -> None:
        events.append("journal_remove")
        real_remove(self, key)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Store, "journal_remove", journal_remove)
    with serve_builds(monkeypatch):
        project.manifest(ONE_ASSET)
        assert build(project).exit_code == 0
    sha = project.lock()["assets"]["a"]["sha256"]
    objects = str(project.root / ".flexforge" / "objects" / sha[:2])
    before = events[: events.index("journal_remove")]
    bytes_synced = [
        e for e in before if e == f"fsync {objects}/{sha}" or e.startswith(f"fsync {objects}/.{sha}.")
    ]
    assert bytes_synced, before  # the bytes
    assert f"fsync {objects}" in before, before  # the rename that names them
    key = project.lock()["assets"]["a"]["key"]
    assert any(e.startswith(f"fsync {project.root}/.flexforge/keys/.{key}.json.") for e in before), before
