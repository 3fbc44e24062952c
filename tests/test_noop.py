"""The no-op memo answers only when the full command would say the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexforge import noop
from tests.helpers import Project, png
from tests.support.spawn import run_flexforge


def flexforge(
    project: Project, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_flexforge("-C", str(project.root), *args, env=env, timeout=60)


@pytest.fixture
def built(project: Project) -> Project:
    png(project.root / "ref.png")
    project.manifest("""
        version: 1
        defaults: {width: 128, height: 128}
        assets:
          a: {prompt: "first 'A'", seed: 1, references: [ref.png]}
          b: {prompt: "second", seed: 2, references: [a]}
    """)
    assert project.build().exit_code == 0
    assert project.build().exit_code == 0  # an up-to-date plan records the memo
    assert Path(noop._memo_path(str(project.root / "flexforge.yaml"))).exists()
    return project


def test_memo_answers_an_unchanged_build_and_plan(built: Project) -> None:
    result = flexforge(built, "build", "--provider", "draft")
    assert (result.returncode, result.stdout) == (0, "Up to date: 2 assets.\n")
    result = flexforge(built, "plan", "--provider", "draft", "--detailed-exitcode")
    assert result.returncode == 0
    assert (
        result.stdout == "Plan: 0 to create, 0 to regenerate, 0 to restore, 2 up to date; no cost (draft).\n"
    )
    assert flexforge(built, "-q", "build", "--provider", "draft").stdout == ""


def test_a_changed_manifest_falls_through(built: Project) -> None:
    built.edit("second", "third")
    result = flexforge(built, "plan", "--provider", "draft", "--detailed-exitcode")
    assert result.returncode == 2
    assert "b  regenerate (prompt)" in result.stdout


def test_a_manifest_added_beside_it_falls_through(built: Project) -> None:
    """Another manifest in the folder writing one of its outputs is a validation error of this
    one too: the memo of an unchanged manifest must not answer "up to date" over it."""
    built.write("ads.yaml", "version: 1\nassets:\n  a: {prompt: other}\n")
    result = flexforge(built, "plan", "--provider", "draft")
    assert result.returncode == 1
    assert "'assets/a.png' is also written by asset 'a' of ads.yaml" in result.stderr


def test_a_changed_reference_falls_through(built: Project) -> None:
    png(built.root / "ref.png", color=(0, 0, 255))
    result = flexforge(built, "plan", "--provider", "draft")
    assert "a  regenerate (references)" in result.stdout


def test_a_hand_edited_output_falls_through(built: Project) -> None:
    png(built.root / "assets/b.png", size=(128, 128), color=(1, 1, 1))
    result = flexforge(built, "plan", "--provider", "draft")
    assert "b  drifted" in result.stdout


def test_another_provider_or_lock_falls_through(built: Project) -> None:
    result = flexforge(built, "plan", env={"FLEXFORGE_PROVIDER": "bfl"})
    assert "regenerate (generator: draft -> flux)" in result.stdout
    lock = built.root / "flexforge.lock"
    doc = json.loads(lock.read_text())
    doc["assets"]["b"]["key"] = "0" * 64
    lock.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    result = flexforge(built, "plan", "--provider", "draft")
    assert "b  restore" in result.stdout  # its real key is still in the object cache


def test_options_the_memo_does_not_cover_fall_through(built: Project) -> None:
    result = flexforge(built, "plan", "--provider", "draft", "-v")
    assert "= a" in result.stdout and "= b" in result.stdout
    result = flexforge(built, "plan", "--provider", "draft", "--json")
    assert '"action": "none"' in result.stdout


def test_a_deleted_output_falls_through(built: Project) -> None:
    Path(built.root / "assets/a.png").unlink()
    result = flexforge(built, "build", "--provider", "draft")
    assert result.returncode == 0
    assert "1 restored" in result.stderr


def test_a_memo_that_does_not_parse_falls_through(built: Project) -> None:
    """The memo is a cache: truncated, bit-flipped or planted bytes are only a memo that does not
    match, never a traceback and never an answer."""
    memo = Path(noop._memo_path(str(built.root / "flexforge.yaml")))
    good = memo.read_bytes()
    bad_memos = [
        b"",
        good[: len(good) // 2],
        good[:-3],
        good + b"\0" * 8,
        good.replace(b"\n2 ", b"\n9 ", 1),
        good.replace(b"flexforge-noop", b"flexforge-noop 3\n", 1),
        b"flexforge-noop 5\n0.1.0\ndraft\n0\n2\n-1\n0\n2 9\n",
        b"\xff" * 200,
    ]
    for data in bad_memos:
        memo.write_bytes(data)
        result = flexforge(built, "plan", "--provider", "draft", "-q")
        assert "Traceback" not in result.stderr, data
        assert result.returncode == 0, result.stderr
    # The full command ran and wrote a good memo again; it answers.
    assert memo.read_bytes().startswith(noop._MAGIC)
    assert noop.answer(["-C", str(built.root), "-q", "build", "--provider", "draft"]) == 0


def test_a_reference_swapped_with_its_old_mtime_falls_through(built: Project) -> None:
    """Same size, mtime set back with `touch -r`: the inode and ctime still tell."""
    ref = built.root / "ref.png"
    before = ref.stat()
    other = built.root / "other.png"
    # Another colour whose PNG has the very same size (a solid colour compresses alike).
    for blue in range(256):
        if png(other, color=(200, 30, blue)).stat().st_size == before.st_size and blue != 30:
            break
    assert other.stat().st_size == before.st_size
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    other.replace(ref)
    assert noop.answer(["-C", str(built.root), "plan", "--provider", "draft"]) is None
    result = flexforge(built, "plan", "--provider", "draft")
    assert "a  regenerate (references)" in result.stdout


def test_a_manifest_edited_while_planning_is_not_vouched_for(built: Project) -> None:
    """The memo vouches only for the bytes the plan read: stamps from before reading that no
    longer match (the file was edited meanwhile) record nothing."""
    manifest = str(built.root / "flexforge.yaml")
    memo = Path(noop._memo_path(manifest))
    memo.unlink()
    lock = str(built.root / "flexforge.lock")
    stale = noop.regular_stamp(manifest)
    assert stale is not None
    built.edit("second", "third")
    stamps = {manifest: stale, lock: noop.regular_stamp(lock)}
    noop.record(manifest, "draft", 2, ["assets/a.png"], ["Plan: ..."], read_stamps=stamps)
    assert not memo.exists()
    stamps[manifest] = noop.regular_stamp(manifest)
    noop.record(manifest, "draft", 2, ["assets/a.png"], ["Plan: ..."], read_stamps=stamps)
    assert memo.exists()


def test_the_noop_answer_loads_no_module_it_does_not_need(built: Project) -> None:
    """What makes the no-op fast is what it does not import: no json, hashlib, typing,
    dataclasses (flexforge.errors), pathlib, click or yaml."""
    code = (
        "import sys\n"
        "import flexforge\n"
        "before = set(sys.modules)\n"
        "from flexforge.noop import answer\n"
        f"code = answer(['-C', {str(built.root)!r}, '-q', 'build', '--provider', 'draft'])\n"
        "print(code, ' '.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    ).stdout.split()
    assert out[0] == "0"
    loaded = set(out[1:])
    needless = {"json", "hashlib", "typing", "dataclasses", "pathlib", "collections", "click", "yaml"}
    assert not loaded & {*needless, "flexforge.errors", "flexforge.cli"}


def test_a_matrix_plan_answered_by_the_memo_prints_its_expansion(project: Project) -> None:
    """`plan` shows which matrix made how many assets (under -q too); the memo's answer must be
    the full command's, line for line."""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          ad-{product}-{channel}:
            matrix: {product: [mug, bag], channel: [feed, story]}
            prompt: "{product} for {channel}"
            out: "ads/{product}-{channel}.png"
          hero: {prompt: "a hero", seed: 3}
    """)
    assert project.build().exit_code == 0
    memo = Path(noop._memo_path(str(project.root / "flexforge.yaml")))
    for args in (["plan"], ["-q", "plan"], ["build"], ["-q", "build"]):
        memo.unlink(missing_ok=True)
        full = flexforge(project, *args, "--provider", "draft")
        assert memo.exists(), args
        answered = flexforge(project, *args, "--provider", "draft")
        assert noop.answer(["-C", str(project.root), *args, "--provider", "draft"]) == 0
        assert (answered.returncode, answered.stdout) == (full.returncode, full.stdout), args
        if "plan" in args:
            assert "  matrix ad-{product}-{channel} (line 4) -> 4 assets\n" in answered.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_answer_stdout_refuses_is_reported_not_a_traceback(built: Project) -> None:
    """A full disk behind stdout: the memo's answer cannot be written, so the full command runs
    and reports it in one line, exit 1, as it would have without a memo."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "flexforge", "-C", str(built.root), "plan", "--provider", "draft"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr
