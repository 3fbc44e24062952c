"""Bad local state is a clear message naming the file and the fix, never "internal error", never a
hang: any JSON in the lock, a lock or manifest that is not a plain file, outputs that are folders,
a read-only checkout, paths longer than file systems allow, outputs that collide on macOS/Windows."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Project, Run
from tests.support.mounts import remount_read_only, tmpfs
from tests.support.spawn import run_flexforge

TWO = """
    version: 1
    defaults: {width: 64, height: 64}
    assets:
      a: {prompt: "one", seed: 1}
      b: {prompt: "two", seed: 2, references: [a]}
"""
LOCK_FIX = "restore it with `git checkout HEAD -- flexforge.lock`, or delete it to rebuild it from the images"
COMMANDS = [("plan", "--provider", "draft"), ("status",), ("build", "--provider", "draft")]


def clean(result: Run | subprocess.CompletedProcess[str]) -> str:
    """stderr, after checking it holds no traceback and no "internal error"."""
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    return result.stderr


@pytest.fixture
def built(project: Project) -> Project:
    project.manifest(TWO)
    assert project.build().exit_code == 0
    return project


def entry_with(built: Project, **changes: Any) -> str:
    doc = built.lock()
    doc["assets"]["a"].update(changes)
    return json.dumps(doc)


# -- any JSON in the lock -----------------------------------------------------------------------------

HOSTILE_LOCKS: dict[str, tuple[Callable[[Project], str], str]] = {
    "deeply-nested-array": (lambda p: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deeply-nested-assets": (
        lambda p: '{"version": 1, "assets": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001,
        "nested too deeply",
    ),
    "nan-cost": (lambda p: entry_with(p, cost_usd=float("nan")), "NaN is not a number JSON allows"),
    "infinite-size": (lambda p: entry_with(p, size=1).replace('"size": 1', '"size": 1e400'), "size"),
    "negative-cost": (lambda p: entry_with(p, cost_usd=-5), "assets.a.cost_usd -5 is not an amount of money"),
    "huge-seed": (lambda p: entry_with(p, seed=10**30), "assets.a.seed 1000000000000000000000000000000 is"),
    "5000-digit-size": (
        lambda p: entry_with(p, size=1).replace('"size": 1', '"size": ' + "9" * 5000),
        "a number thousands of digits long",
    ),
    "version-true": (lambda p: json.dumps({**p.lock(), "version": True}), "unsupported lock version True"),
    "assets-a-list": (lambda p: '{"version": 1, "assets": []}', "'assets' is a JSON array, not an object"),
    "top-level-null": (lambda p: "null", "a JSON null, not an object"),
    "entry-a-string": (lambda p: '{"version": 1, "assets": {"a": "x"}}', "assets.a is a JSON string"),
    "parts-a-list": (lambda p: entry_with(p, parts=[1, 2]), "assets.a.parts: a JSON array is not a object"),
    "seed-a-bool": (lambda p: entry_with(p, seed=True), "assets.a.seed: True is not a number"),
    "control-characters-in-name": (
        lambda p: json.dumps({**p.lock(), "assets": {"b\x1b[31mred": p.lock()["assets"]["a"]}}),
        "asset name 'b\\x1b[31mred' is not an asset id",
    ),
    "lone-surrogate-in-name": (
        lambda p: '{"version": 1, "assets": {"\\ud800": {}}}',
        "asset name '\\ud800' is not an asset id",
    ),
    "escape-sequence-in-out": (
        lambda p: entry_with(p, out="x\x1b[2J.png"),
        "assets.a.out is not short printable",
    ),
    "10-MB-task-id": (lambda p: entry_with(p, task_id="t" * 10_000_000), "assets.a.task_id is not short"),
    "utf-16": (lambda p: json.dumps(p.lock()).encode("utf-16").decode("latin-1"), "not UTF-8"),
    "empty": (lambda p: "", "Expecting value"),
}


@pytest.mark.parametrize("shape", list(HOSTILE_LOCKS))
def test_any_json_in_the_lock_is_one_clear_error_naming_the_fix(built: Project, shape: str) -> None:
    make, what = HOSTILE_LOCKS[shape]
    text = make(built)
    (built.root / "flexforge.lock").write_bytes(text.encode("latin-1" if shape == "utf-16" else "utf-8"))
    for command in COMMANDS:
        result = built.run(*command)
        stderr = clean(result)
        assert result.exit_code == 1, (command, stderr)
        assert stderr.startswith("error: flexforge.lock: not a valid flexforge lock: "), stderr[:300]
        assert what in stderr and LOCK_FIX in stderr, stderr[:500]
        assert stderr.count("\n") == 1 and len(stderr) < 600  # one line, however big the lock
        assert "\x1b" not in stderr


# -- a lock or manifest that is not a plain file ------------------------------------------------------


def make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def make_zero_link(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def make_folder(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


NOT_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (make_fifo, "is a special file (FIFO, device or socket), not a file"),
    "link-to-dev-zero": (make_zero_link, "(FIFO, device or socket), not a file"),
    "folder": (make_folder, "is a folder, not a file"),
}


@pytest.mark.parametrize("kind", list(NOT_FILES))
def test_a_lock_that_is_not_a_plain_file_is_refused_without_blocking(built: Project, kind: str) -> None:
    """Real processes (a FIFO would block one forever): after a no-op build has left its memo,
    so the fast path meets the FIFO too."""
    make, what = NOT_FILES[kind]
    assert run_flexforge("-C", str(built.root), "plan", "--provider", "draft").returncode == 0  # the memo
    make(built.root / "flexforge.lock")
    for command in COMMANDS:
        result = run_flexforge("-C", str(built.root), *command, timeout=30)
        stderr = clean(result)
        assert result.returncode == 1, stderr
        if kind == "link-to-dev-zero":
            assert "flexforge.lock: is a symbolic link; flexforge's lock is a plain file" in stderr
        else:
            assert f"flexforge.lock: {what}; flexforge's lock is a plain file: {LOCK_FIX}" in stderr


@pytest.mark.parametrize("kind", list(NOT_FILES))
def test_a_manifest_that_is_not_a_plain_file_is_refused_without_blocking(built: Project, kind: str) -> None:
    make, what = NOT_FILES[kind]
    assert run_flexforge("-C", str(built.root), "plan", "--provider", "draft").returncode == 0  # the memo
    make(built.root / "flexforge.yaml")
    for command in [("validate",), *COMMANDS]:
        result = run_flexforge("-C", str(built.root), *command, timeout=30)
        stderr = clean(result)
        assert result.returncode == 1, stderr
        assert re.search(rf":1:1: cannot read: .*{re.escape(what)}", stderr), stderr


def test_a_huge_manifest_is_refused_after_a_bounded_read(project: Project) -> None:
    project.manifest("version: 1\nassets: {}\n" + "#" * (17 * 2**20))
    result = project.run("validate")
    assert result.exit_code == 1 and "larger than 16 MiB" in clean(result)


# -- outputs that are folders or unreadable -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_output_that_is_not_a_file_is_named_per_asset(built: Project, kind: str) -> None:
    out = built.root / "assets" / "a.png"
    out.unlink()
    out.mkdir() if kind == "folder" else os.mkfifo(out)
    fifo = "is a special file (FIFO, device or socket), not a file"
    problem = "is a folder, not a file" if kind == "folder" else fifo

    plan = built.run("plan", "--provider", "draft")
    assert plan.exit_code == 1 and "x a  blocked (assets/a.png " in plan.stdout and problem in plan.stdout
    assert "1 blocked" in plan.stdout
    status = built.run("status", "--provider", "draft")
    assert status.exit_code == 0 and re.search(r"a\s+blocked .*assets/a.png  \(assets/a.png ", status.stdout)
    accept = built.run("accept", "a")
    assert accept.exit_code == 1 and f"error: a: assets/a.png {problem}" in clean(accept)

    build = built.build()
    stderr = clean(build)
    assert build.exit_code == 1
    assert f"failed: a: assets/a.png {problem}; move it away so flexforge can write the image there" in stderr
    assert "skipped: b: needs a, which failed" in stderr
    assert out.is_dir() if kind == "folder" else out.is_fifo(), "left alone"


# -- a read-only checkout -----------------------------------------------------------------------------


def test_a_read_only_checkout_plans_explains_and_checks_frozen_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount (a CI cache, a container layer): the commands that only read work; one
    that must write says so in a line."""
    with tmpfs(tmp_path / "ro", size="16m") as root:
        project = Project(root)
        project.manifest(TWO)
        assert project.build().exit_code == 0
        # Fresh caches, as on another machine; the state folder is not committed.
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-cache"))
        subprocess.run(["rm", "-rf", str(root / ".flexforge")], check=True)
        remount_read_only(root)
        for command in [
            ("validate",),
            ("plan", "--provider", "draft"),
            ("status", "--provider", "draft"),
            ("explain", "a"),
            ("build", "--frozen", "--provider", "draft"),
            ("build", "--provider", "draft"),
            ("graph",),
        ]:
            result = run_flexforge("-C", str(root), *command, timeout=60)
            assert result.returncode == 0, (command, clean(result))
        replace = run_flexforge("-C", str(root), "build", "--provider", "draft", "--replace", "a")
        assert replace.returncode == 1
        assert (
            "error: cannot write in .flexforge (Read-only file system): this checkout is read-only"
            in clean(replace)
        )
        accept = run_flexforge("-C", str(root), "accept", "a")
        assert accept.returncode == 1 and "Read-only file system" in clean(accept)


# -- paths too long; outputs that collide on case-insensitive file systems ----------------------------


def test_paths_longer_than_file_systems_allow_are_located_errors_clipped(project: Project) -> None:
    deep = "d/" * 2100 + "a.png"
    project.manifest(
        "version: 1\ndefaults: {width: 64, height: 64}\nassets:\n"
        f'  a: {{prompt: "x", seed: 1, out: "{deep}"}}\n'
        f'  b: {{prompt: "x", seed: 1, out: "{"n" * 300}.png"}}\n'
        f'  c: {{prompt: "x", seed: 1, references: ["{"r" * 5000}.png"]}}\n'
    )
    for command in (("validate",), ("plan", "--provider", "draft"), ("build", "--provider", "draft")):
        result = project.run(*command)
        stderr = clean(result)
        assert result.exit_code == 1
        assert "flexforge.yaml:4:" in stderr and "is 4205 bytes long; paths may be at most 1024" in stderr
        assert (
            "flexforge.yaml:5:" in stderr
            and "has a name of 304 bytes; file systems allow at most 255" in stderr
        )
        assert "flexforge.yaml:6:" in stderr and "reference 'rrrr" in stderr
        assert max(len(line) for line in stderr.splitlines()) < 300


def test_line_breaks_in_ids_and_paths_are_located_errors_not_file_names(project: Project) -> None:
    """Regression: Python's `$` matches before a final line break, so the asset-id pattern took
    "hero\n" and the build wrote an output named with a line break (left as a temp file). Keys
    and paths holding line breaks or control characters are refused where they are written."""
    project.manifest(
        "version: 1\ndefaults: {width: 64, height: 64}\nassets:\n"
        '  "hero\\n": {prompt: "x", seed: 1}\n'
        '  side: {prompt: "x", seed: 1, out: "assets/a\\tb.png"}\n'
        '  ref: {prompt: "x", seed: 1, references: ["refs/a\\nb.png"]}\n'
    )
    for command in (("validate",), ("build", "--provider", "draft")):
        result = project.run(*command)
        stderr = clean(result)
        assert result.exit_code == 1
        assert "flexforge.yaml:4:" in stderr and "a key holds a line break or control character" in stderr
        assert "flexforge.yaml:5:" in stderr and "out contains a line break" in stderr
        assert "flexforge.yaml:6:" in stderr and "reference contains a line break" in stderr
    assert not (project.root / "assets").exists()


def test_a_lock_review_or_journal_name_ending_in_a_line_break_is_refused() -> None:
    """The same `$` let a committed lock's asset name or blob id, a pull request's review data
    and a journal's task id end in a line break."""
    from flexforge.ci import review
    from flexforge.lockfile import parse_entries
    from flexforge.store import TASK_ID

    entry = {
        "key": "1" * 64,
        "parts": {},
        "seed": 1,
        "model": "m",
        "generator": "draft",
        "provider": "draft",
        "out": "a.png",
        "sha256": "2" * 64,
        "size": 1,
    }
    with pytest.raises(ValueError, match="is not an asset id"):
        parse_entries(json.dumps({"version": 1, "assets": {"hero\n": entry}}).encode())
    with pytest.raises(ValueError, match="git_blobs"):
        parse_entries(
            json.dumps(
                {"version": 1, "assets": {"hero": {**entry, "git_blobs": {"3" * 40 + "\n": "2" * 64}}}}
            ).encode()
        )
    assert review._REPO.match("owner/repo\n") is None and review._SHA.match("f" * 40 + "\n") is None
    assert TASK_ID.match("task\n") is None


def test_a_manifest_path_longer_than_path_max_is_one_clipped_line(project: Project) -> None:
    result = run_flexforge("-C", str(project.root), "-f", "y" * 300, "validate")
    stderr = clean(result)
    assert result.returncode == 1 and "File name too long" in stderr
    assert max(len(line) for line in stderr.splitlines()) < 300
    result = run_flexforge("-C", "/tmp/" + "x" * 5000, "plan")
    assert result.returncode in (1, 2) and max(len(line) for line in clean(result).splitlines()) < 300


@pytest.mark.parametrize(
    ("first", "second", "shown"),
    [
        ("img/Hero.png", "img/hero.png", "'img/hero.png' and 'img/Hero.png'"),
        ("IMG/x.png", "img/x.png", "'img/x.png' and 'IMG/x.png'"),
        ("img/caf\u00e9.png", "img/cafe\u0301.png", "'img/cafe\\u0301.png' and 'img/caf\\xe9.png'"),
    ],
    ids=["case", "folder-case", "nfc-nfd"],
)
def test_outputs_that_differ_only_by_case_or_normalisation_are_located_errors(
    project: Project, first: str, second: str, shown: str
) -> None:
    """They are two files on Linux and one on macOS and Windows: a build there would write both
    assets to one file, and the lock would lie about one of them."""
    project.manifest(
        "version: 1\ndefaults: {width: 64, height: 64}\nassets:\n"
        f'  a: {{prompt: "x", seed: 1, out: "{first}"}}\n'
        f'  b: {{prompt: "y", seed: 2, out: "{second}"}}\n'
    )
    result = project.run("validate")
    stderr = clean(result)
    assert result.exit_code == 1
    assert (
        "flexforge.yaml:5:" in stderr
        and f"assets.b.out: {shown} (asset 'a') differ only by letter case" in stderr
    )
