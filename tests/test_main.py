"""`python -m flexforge`: how the process ends. It skips the interpreter's teardown once nothing
is left running, and must lose neither output nor exit code by it."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from flexforge.__main__ import _leave
from tests.helpers import Project
from tests.support.spawn import flexforge_argv, run_flexforge


def test_a_plans_whole_output_and_exit_code_reach_a_pipe(project: Project) -> None:
    """Much more than a pipe's buffer, then os._exit: every byte was flushed first."""
    assets = "".join(f'  a{i:04d}: {{prompt: "A poster, number {i}"}}\n' for i in range(600))
    project.manifest("version: 1\nassets:\n" + assets)

    done = run_flexforge("-C", str(project.root), "plan", "--json", "--provider", "draft")
    changes = run_flexforge(
        "-C", str(project.root), "plan", "--provider", "draft", "--detailed-exitcode", "-q"
    )

    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["assets"]) == 600
    assert changes.returncode == 2, changes.stderr


def test_a_thread_still_at_work_gets_the_normal_exit() -> None:
    """A thread that is not a daemon may be writing something: Python's exit waits for it."""
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as raised:
            _leave(SystemExit(3))
        assert raised.value.code == 3
    finally:
        release.set()
        worker.join()


def test_an_exit_with_a_message_gets_the_normal_exit() -> None:
    with pytest.raises(SystemExit) as raised:
        _leave(SystemExit("usage: ..."))
    assert raised.value.code == "usage: ..."


@pytest.mark.parametrize("args", [("plan", "--help"), ("--version",), ("--help",)])
def test_help_or_version_to_a_full_disk_is_one_line_not_a_traceback(args: tuple[str, ...]) -> None:
    """Regression: what click writes before any command runs (help, usage, version) met a full
    disk (`> /dev/full`) outside flexforge's error handling: a click traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            flexforge_argv(*args), stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: cannot write the output: No space left on device"]
