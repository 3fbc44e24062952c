"""`flexforge lock merge`: shard locks into the project lock, through the CLI, with real files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Project
from tests.support.emulator import serve_builds
from tests.support.s3 import S3Server, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]

MANIFEST = """\
version: 1
defaults: {width: 64, height: 64}
assets:
  hero: {prompt: "a hero", seed: 1}
  banner: {prompt: "a banner from the hero", seed: 2, references: [hero]}
  icon: {prompt: "an icon", seed: 3}
  badge: {prompt: "a badge", seed: 4}
  tile: {prompt: "a tile"}
"""


def project_at(root: Path, lock: Path | None = None) -> Project:
    project = Project(root)
    project.manifest(MANIFEST)
    if lock is not None:
        shutil.copy(lock, root / "flexforge.lock")
    return project


@pytest.fixture
def base(tmp_path: Path) -> Project:
    """The committed state: every asset built once."""
    project = project_at(tmp_path / "base")
    assert project.build().exit_code == 0
    return project


def shard_locks(base: Project, tmp_path: Path, count: int, edit: tuple[str, str] | None = None) -> list[Path]:
    """Each shard built on its own copy of the project, from the committed lock; its lock
    saved as a CI artifact would be."""
    locks = []
    for i in range(1, count + 1):
        runner = project_at(tmp_path / f"runner-{i}", base.root / "flexforge.lock")
        if edit is not None:
            runner.edit(*edit)
        result = runner.build("--shard", f"{i}/{count}")
        assert result.exit_code == 0, result.stderr
        artifact = tmp_path / "artifacts" / f"shard-{i}" / "flexforge.lock"
        artifact.parent.mkdir(parents=True)
        shutil.copy(runner.root / "flexforge.lock", artifact)
        locks.append(artifact)
    return locks


def merge(project: Project, *files: Path) -> tuple[int, str]:
    result = project.run("lock", "merge", "--provider", "draft", *map(str, files))
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result.exit_code, result.stderr


EDIT = ('hero: {prompt: "a hero"', 'hero: {prompt: "a new hero"')


def test_shard_locks_merge_into_what_one_full_build_writes(base: Project, tmp_path: Path) -> None:
    locks = shard_locks(base, tmp_path, 3, EDIT)
    full = project_at(tmp_path / "full", base.root / "flexforge.lock")
    full.edit(*EDIT)
    assert full.build().exit_code == 0
    fan_in = project_at(tmp_path / "fan-in", base.root / "flexforge.lock")
    fan_in.edit(*EDIT)
    code, err = merge(fan_in, *locks)
    assert code == 0, err
    # hero and banner (made from it) changed; the other shards built nothing new.
    assert "Merged 2 entries from 3 files" in err
    assert fan_in.read("flexforge.lock") == full.read("flexforge.lock")
    # Nothing but the lock: no image made or fetched (the build lock is all the state folder holds).
    assert sorted(p.name for p in fan_in.root.iterdir()) == [".flexforge", "flexforge.lock", "flexforge.yaml"]
    assert sorted(p.name for p in (fan_in.root / ".flexforge").iterdir()) == [".gitignore", "build.lock"]


def test_merging_again_changes_nothing(base: Project, tmp_path: Path) -> None:
    locks = shard_locks(base, tmp_path, 2, EDIT)
    fan_in = project_at(tmp_path / "fan-in", base.root / "flexforge.lock")
    fan_in.edit(*EDIT)
    assert merge(fan_in, *locks)[0] == 0
    before = (fan_in.root / "flexforge.lock").stat()
    code, err = merge(fan_in, *locks)
    assert code == 0 and "Merged 0 entries" in err and "nothing to write" in err
    assert (fan_in.root / "flexforge.lock").stat().st_mtime_ns == before.st_mtime_ns


def test_two_locks_with_different_images_for_one_asset_are_refused_and_nothing_is_written(
    base: Project, tmp_path: Path
) -> None:
    (first,) = shard_locks(base, tmp_path / "run-a", 1, EDIT)
    (second,) = shard_locks(
        base, tmp_path / "run-b", 1, ('hero: {prompt: "a hero"', 'hero: {prompt: "another"')
    )
    fan_in = project_at(tmp_path / "fan-in", base.root / "flexforge.lock")
    before = fan_in.read("flexforge.lock")
    code, err = merge(fan_in, first, second)
    assert code == 1
    assert "nothing was written" in err
    assert f"hero: {first} has key" in err and f"; {second} has key" in err
    assert "merge the locks of one run of the shards" in err
    assert fan_in.read("flexforge.lock") == before


def test_an_entry_for_another_manifest_is_not_merged_and_says_why(base: Project, tmp_path: Path) -> None:
    locks = shard_locks(base, tmp_path, 2, EDIT)
    fan_in = project_at(tmp_path / "fan-in", base.root / "flexforge.lock")  # the manifest without the edit
    before = json.loads(fan_in.read("flexforge.lock"))
    code, err = merge(fan_in, *locks)
    assert code == 0, err
    shard = next(p for p in locks if "a new hero" not in p.read_text() and _has(p, "hero"))
    assert f"not merged: hero ({shard}): built for another request (prompt)" in err
    # banner was made from the new hero: its key names an image the merge refused.
    assert "not merged: banner" in err and "built for another request (upstream)" in err, err
    assert json.loads(fan_in.read("flexforge.lock")) == before


def _has(lock: Path, asset: str) -> bool:
    return asset in json.loads(lock.read_text())["assets"]


def test_an_asset_gone_from_the_manifest_is_not_merged(base: Project, tmp_path: Path) -> None:
    locks = shard_locks(
        base, tmp_path, 1, ('  badge: {prompt: "a badge", seed: 4}\n', '  gone: {prompt: "x", seed: 9}\n')
    )
    fan_in = project_at(tmp_path / "fan-in", base.root / "flexforge.lock")
    code, err = merge(fan_in, *locks)
    assert code == 0
    assert "not merged: gone" in err and "not in the manifest" in err
    assert "gone" not in fan_in.lock()["assets"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"not json", "not a valid flexforge lock"),
        (b'{"version": 1, "assets": {"hero": {"key": "zz"}}}', "not a valid flexforge lock"),
        (b"<<<<<<< HEAD\n", "merge-conflict markers"),
    ],
)
def test_a_bad_lock_file_is_one_line_naming_it(
    base: Project, tmp_path: Path, content: bytes, said: str
) -> None:
    bad = tmp_path / "artifacts" / "flexforge.lock"
    bad.parent.mkdir()
    bad.write_bytes(content)
    code, err = merge(base, bad)
    assert code == 1
    assert err.startswith(f"error: {bad}") and said in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_lock_file_is_named(base: Project, tmp_path: Path) -> None:
    code, err = merge(base, tmp_path / "nowhere" / "flexforge.lock")
    assert code == 1 and "nowhere/flexforge.lock: no such file" in err


def test_merge_needs_at_least_one_file(base: Project) -> None:
    result = base.run("lock", "merge")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


def test_a_folder_or_fifo_for_a_lock_is_refused(base: Project, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    code, err = merge(base, fifo)
    assert code == 1 and str(fifo) in err
    code, err = merge(base, tmp_path)
    assert code == 1 and str(tmp_path) in err


# -- end to end: four shard runners on separate clones, one remote, a fan-in ------------------

E2E_ASSETS = 16


def e2e_manifest(version: str) -> str:
    lines = ["version: 1", "defaults: {width: 64, height: 64}", "assets:"]
    for i in range(E2E_ASSETS):
        # Every third asset made from the one before: shards keep those groups whole.
        refs = f", references: [p{i - 1:02d}]" if i % 3 == 2 else ""
        changes = i % 2 and version != "v1"  # a new seed too: the emulator draws from the seed alone
        seed = f", seed: {i + 50 if changes else i}" if i % 4 else ""  # some without: machines must agree
        prompt = f"picture {i}" + (f" {version}" if i % 2 else "")
        lines.append(f'  p{i:02d}: {{prompt: "{prompt}"{seed}{refs}}}')
    return "\n".join(lines) + "\n"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{name}_NAME", "t")
        monkeypatch.setenv(f"GIT_{name}_EMAIL", "t@example.com")
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    yield bare


def clone(origin: Path, where: Path) -> Project:
    git(origin.parent, "clone", "-q", str(origin), str(where))
    return Project(where)


def commit_all(project: Project, message: str) -> None:
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", message)
    git(project.root, "push", "-q", "origin", "HEAD:main")


def test_four_shards_on_separate_clones_then_lock_merge_and_a_frozen_build_pay_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: S3Server, origin: Path
) -> None:
    monkeypatch.setenv("FLEXFORGE_REMOTE", f"s3://{s3_env.new_bucket()}/ci")
    with serve_builds(monkeypatch, latency=0.05) as emu:
        dev = clone(origin, tmp_path / "developer")
        dev.manifest(e2e_manifest("v1"))
        (dev.root / ".gitignore").write_text(".flexforge/\n")
        assert dev.run("build", "--provider", "emulator").exit_code == 0
        commit_all(dev, "images v1")
        dev.manifest(e2e_manifest("v2"))  # half the prompts change, and what is made from them
        commit_all(dev, "prompts v2")
        paid_before = emu.stats()["submissions"]
        assert paid_before == E2E_ASSETS

        artifacts = tmp_path / "artifacts"
        for i in range(1, 5):
            runner = clone(origin, tmp_path / f"runner-{i}")
            result = runner.run("build", "--provider", "emulator", "--shard", f"{i}/4")
            assert result.exit_code == 0, result.stderr
            (artifacts / f"shard-{i}").mkdir(parents=True)
            shutil.copy(runner.root / "flexforge.lock", artifacts / f"shard-{i}" / "flexforge.lock")
        paid_by_shards = emu.stats()["submissions"] - paid_before
        assert 0 < paid_by_shards < E2E_ASSETS

        fan_in = clone(origin, tmp_path / "fan-in")
        locks = sorted(artifacts.glob("shard-*/flexforge.lock"))
        merged = fan_in.run("lock", "merge", "--provider", "emulator", *map(str, locks))
        assert merged.exit_code == 0, merged.stderr
        assert f"Merged {paid_by_shards} entries from 4 files" in merged.stderr
        assert "not merged" not in merged.stderr
        frozen = fan_in.run("build", "--provider", "emulator", "--frozen")
        assert frozen.exit_code == 0, frozen.stderr
        # Every new image comes from the remote over the older one committed in place (the
        # dependents of a changed image can come out the same: the emulator draws from the seed).
        v1 = json.loads(git(fan_in.root, "show", "HEAD:flexforge.lock"))["assets"]
        new_images = sum(e["sha256"] != v1[a]["sha256"] for a, e in fan_in.lock()["assets"].items())
        assert f"0 generated, {new_images} restored" in frozen.stderr and new_images >= 8
        assert emu.stats()["submissions"] == paid_before + paid_by_shards  # 0 at the fan-in
        # One lock, every entry the image in place, and nothing left to do.
        for entry in fan_in.lock()["assets"].values():
            assert hashlib.sha256(fan_in.read(entry["out"])).hexdigest() == entry["sha256"]
        plan = fan_in.run("plan", "--provider", "emulator", "--json")
        assert {a["action"] for a in plan.json()["assets"]} == {"none"}


def test_after_a_merge_an_older_committed_image_is_restored_over_but_a_hand_edit_stays_drifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origin: Path
) -> None:
    """The lock moved on (merged), the files did not: what an older committed lock recorded at
    a path is flexforge's own image and git keeps it, so a restore replaces it; bytes no lock
    ever recorded are a hand edit, and stay."""
    from tests.helpers import png

    monkeypatch.setenv("FLEXFORGE_REMOTE", f"file://{tmp_path / 'team-remote'}")
    dev = clone(origin, tmp_path / "developer")
    dev.manifest(MANIFEST)
    (dev.root / ".gitignore").write_text(".flexforge/\n")
    assert dev.build().exit_code == 0
    commit_all(dev, "images")
    dev.edit('icon: {prompt: "an icon", seed: 3}', 'icon: {prompt: "an icon", seed: 30}')
    dev.edit('badge: {prompt: "a badge", seed: 4}', 'badge: {prompt: "a badge", seed: 40}')
    commit_all(dev, "new seeds")
    runner = clone(origin, tmp_path / "runner")
    assert runner.build().exit_code == 0  # pushes the new icon and badge to the remote
    fan_in = clone(origin, tmp_path / "fan-in")
    png(fan_in.root / "assets" / "badge.png", color=(1, 2, 3))  # edited by hand before the merge
    code, err = merge(fan_in, runner.root / "flexforge.lock")
    assert code == 0 and "Merged 2 entries" in err, err
    plan = fan_in.plan()
    assert plan["icon"] == "restore" and plan["badge"] == "drifted", plan
    assert plan["hero"] == "none"
