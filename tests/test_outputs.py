"""Outputs: the one transaction that records an asset's bytes and its lock entry together."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

import pytest

from flexforge import outputs as outputs_module
from flexforge.keys import content_key
from flexforge.lockfile import Lock, read_lock
from flexforge.manifest import Asset, Manifest, load_manifest
from flexforge.noop import file_stamp
from flexforge.outputs import Outputs
from flexforge.store import KeyRecord, Store

MANIFEST = """
version: 1
defaults: {width: 64, height: 64}
assets:
  a: {prompt: "first", seed: 1}
  b: {prompt: "second", seed: 2}
"""


class Project:
    def __init__(self, root: Path) -> None:
        (root / "flexforge.yaml").write_text(MANIFEST)
        self.root = root
        self.manifest: Manifest = load_manifest(root / "flexforge.yaml")
        self.store = Store(root / ".flexforge", cache_dir=root / "user-cache")
        self.lock = read_lock(root / "flexforge.lock")

    def asset(self, asset_id: str) -> Asset:
        return self.manifest.assets[asset_id]

    def outputs(self, **kwargs: object) -> Outputs:
        return Outputs(self.lock, self.store, **kwargs)  # type: ignore[arg-type]

    def record(
        self, outputs: Outputs, asset_id: str, data: bytes, *, durable: bool = True, **kw: bool
    ) -> str:
        """Stage `data` as `asset_id`'s output and record it; its sha256."""
        asset = self.asset(asset_id)
        sha = hashlib.sha256(data).hexdigest()
        staged = outputs.stage(self.root / asset.out, data, durable=durable)
        made = KeyRecord(sha, len(data), "draft", asset.seed or 0)
        key = content_key(asset, "draft", asset.seed or 0, [])
        outputs.record(asset, key, asset.seed or 0, "draft", made, staged, durable=durable, **kw)
        return sha

    def on_disk(self) -> dict[str, str]:
        """Asset id -> sha256, as the lock file on disk says."""
        doc = json.loads((self.root / "flexforge.lock").read_text())
        return {k: v["sha256"] for k, v in doc["assets"].items()}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def temps(root: Path) -> list[Path]:
    return sorted(root.rglob("*.ff-*.tmp"))


def test_an_output_appears_only_with_the_lock_write_that_names_it(project: Project) -> None:
    outputs = project.outputs()
    sha = project.record(outputs, "a", b"image a")
    out = project.root / project.asset("a").out
    assert not out.exists() and not (project.root / "flexforge.lock").exists()  # outside a loop: no flush yet
    assert outputs.flush().failed == {}
    assert out.read_bytes() == b"image a"
    assert project.on_disk() == {"a": sha}
    assert outputs.made_here == {"a"}
    assert temps(project.root) == []


def test_what_it_wrote_is_known_without_hashing_again(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = project.outputs()
    sha = project.record(outputs, "a", b"image a")
    outputs.close()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr("flexforge.fsutil.sha256_file", no_hashing)
    again = Store(project.root / ".flexforge", cache_dir=project.root / "user-cache")  # saved by close()
    assert again.digest(project.asset("a").out) == sha


def test_a_failed_rename_puts_the_old_entry_back_and_fails_only_that_asset(project: Project) -> None:
    outputs = project.outputs()
    old = project.record(outputs, "b", b"old b")
    outputs.flush()
    first = project.record(outputs, "a", b"image a")
    project.record(outputs, "b", b"new b")
    # A folder where b's file goes: the rename fails, as on a full disk or a read-only folder.
    out_b = project.root / project.asset("b").out
    out_b.unlink()
    out_b.mkdir()
    (out_b / "keep").write_text("x")
    result = outputs.flush()
    assert list(result.failed) == ["b"] and "cannot write" in result.failed["b"]
    assert not result.fatal and result.stop is None
    assert project.on_disk() == {"a": first, "b": old}  # b's entry as it was: its file is not there
    assert project.lock.entries["b"].sha256 == old
    assert (project.root / project.asset("a").out).read_bytes() == b"image a"
    assert temps(project.root) == []


def test_no_lock_is_written_over_one_that_changed_on_disk(project: Project) -> None:
    failures = []
    outputs = project.outputs(on_flushed=failures.append)
    project.record(outputs, "a", b"image a")
    other = '{"_generated": "the other branch", "assets": {}, "version": 1}\n'
    (project.root / "flexforge.lock").write_text(other)  # a `git checkout` meanwhile
    result = outputs.flush()
    assert result.fatal and "changed on disk" in (result.stop or "") and list(result.failed) == ["a"]
    assert failures == [result]
    assert (project.root / "flexforge.lock").read_text() == other
    assert not (project.root / project.asset("a").out).exists()
    assert "a" not in project.lock.entries and temps(project.root) == []


def test_no_lock_is_written_over_a_manifest_that_changed(project: Project) -> None:
    outputs = project.outputs(watch=(project.manifest.path, "flexforge.yaml"))
    project.record(outputs, "a", b"image a")
    (project.root / "flexforge.yaml").write_text(MANIFEST + "# edited\n")
    result = outputs.flush()
    assert result.fatal and (result.stop or "").startswith("flexforge.yaml changed on disk")
    assert not (project.root / "flexforge.lock").exists()


def test_bytes_staged_without_fsync_are_synced_before_the_lock_names_them(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_sync, real_write = outputs_module.sync_files, Lock.write

    def sync_files(paths: list[Path]) -> None:
        events.append("sync " + ",".join(sorted(p.name.split(".ff-")[0] for p in paths)))
        real_sync(paths)

    def write(self: Lock, data: bytes, *, sync_folder: bool = True) -> bool:
        events.append("lock")
        return real_write(self, data, sync_folder=sync_folder)

    monkeypatch.setattr(outputs_module, "sync_files", sync_files)
    monkeypatch.setattr(Lock, "write", write)
    outputs = project.outputs()
    project.record(outputs, "a", b"restored a", durable=False)
    project.record(outputs, "b", b"paid b", durable=True)  # fsynced when staged: not again
    outputs.flush()
    assert events == ["sync .a.png", "lock"]


def test_only_urgent_records_write_the_lock_during_a_build(project: Project) -> None:
    async def build() -> list[dict[str, str]]:
        outputs = project.outputs()
        seen = []
        project.record(outputs, "a", b"restored a", durable=False, urgent=False)
        await asyncio.sleep(0.3)  # longer than the lock-write interval
        seen.append(project.on_disk() if (project.root / "flexforge.lock").exists() else {})
        project.record(outputs, "b", b"paid b", urgent=True)
        await outputs.idle()  # the write runs on the writer thread, the loop free meanwhile
        seen.append(project.on_disk())
        return seen

    seen = asyncio.run(build())
    assert seen[0] == {}  # a restore waits for the next write: a kill restores it again, free
    assert set(seen[1]) == {"a", "b"}  # and goes with the first urgent one


def _blocked_lock_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Lock writes that wait for the returned event; the thread each ran on, listed."""
    release, threads = threading.Event(), []
    real_write = Lock.write

    def write(self: Lock, data: bytes, *, sync_folder: bool = True) -> bool:
        threads.append(threading.current_thread().name)
        assert release.wait(60)
        return real_write(self, data, sync_folder=sync_folder)

    monkeypatch.setattr(Lock, "write", write)
    return release, threads


def test_a_lock_write_under_way_does_not_hold_up_the_build(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, threads = _blocked_lock_writes(monkeypatch)

    async def build() -> tuple[bool, dict[str, str], dict[str, str]]:
        outputs = project.outputs()
        project.record(outputs, "a", b"paid a", urgent=True)  # starts a write, which blocks
        for _ in range(5):
            await asyncio.sleep(0)  # the loop runs on meanwhile
        project.record(outputs, "b", b"paid b", urgent=True)  # waits for the write under way
        stuck = not (project.root / "flexforge.lock").exists()
        release.set()
        await outputs.idle()
        first = project.on_disk()
        outputs.close()
        return stuck, first, project.on_disk()

    stuck, first, last = asyncio.run(build())

    assert stuck  # the loop went on while the lock write was blocked
    assert "b" not in first or first == last  # b went with the next write, never half
    assert set(last) == {"a", "b"}
    assert threads and all(name.startswith("flexforge-lock") for name in threads[:1])
    assert (project.root / "assets" / "a.png").read_bytes() == b"paid a"


def test_closing_waits_for_the_lock_write_under_way_then_writes_the_rest(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, _ = _blocked_lock_writes(monkeypatch)

    async def build() -> dict[str, str]:
        outputs = project.outputs()
        project.record(outputs, "a", b"paid a", urgent=True)
        project.record(outputs, "b", b"restored b", durable=False, urgent=False)
        threading.Timer(0.05, release.set).start()  # close() blocks until the write is done
        outputs.close()
        return project.on_disk()

    assert set(asyncio.run(build())) == {"a", "b"}
    assert (project.root / "assets" / "b.png").read_bytes() == b"restored b"


def test_a_lock_write_that_fails_on_the_writer_thread_fails_its_assets(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Lock, data: bytes, *, sync_folder: bool = True) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Lock, "write", refuse)
    reported: list[outputs_module.Flushed] = []

    async def build() -> None:
        outputs = project.outputs(on_flushed=reported.append)
        project.record(outputs, "a", b"paid a", urgent=True)
        await outputs.idle()

    asyncio.run(build())

    assert len(reported) == 1 and reported[0].fatal and "No space left" in str(reported[0].stop)
    assert set(reported[0].failed) == {"a"}
    assert not (project.root / "assets" / "a.png").exists()  # never in place without the lock naming it
    assert "a" not in project.lock.entries  # put back as it was


def test_an_output_already_in_place_is_recorded_without_staging(project: Project) -> None:
    asset = project.asset("a")
    out = project.root / asset.out
    out.parent.mkdir(parents=True)
    out.write_bytes(b"agency image")
    sha = hashlib.sha256(b"agency image").hexdigest()
    outputs = project.outputs()
    made = KeyRecord(sha, len(b"agency image"), "accepted", 1)
    outputs.record(asset, content_key(asset, "draft", 1, []), 1, "draft", made)
    outputs.close()
    assert project.on_disk() == {"a": sha} and outputs.made_here == set()
    assert read_lock(project.root / "flexforge.lock").entries["a"].provider == "accepted"


def test_drop_forgets_an_orphan_at_the_next_write(project: Project) -> None:
    outputs = project.outputs()
    project.record(outputs, "a", b"image a")
    project.record(outputs, "b", b"image b")
    outputs.flush()
    outputs.drop("b")
    outputs.flush()
    assert list(project.on_disk()) == ["a"]


def test_stale_temps_beside_outputs_and_the_lock_are_removed(project: Project) -> None:
    outputs = project.outputs()
    out = project.root / project.asset("a").out
    outputs.stage(out, b"killed mid-write")  # what a killed build leaves
    outputs.stage(project.root / "flexforge.lock", b"{}")
    mine = project.root / "assets" / ".a.png.backup.tmp"  # a user's own file: kept
    mine.write_text("x")
    assert len(temps(project.root)) == 2
    outputs.remove_stale_temps([project.asset("a").out])
    assert temps(project.root) == [] and mine.exists()


def restored(project: Project, outputs: Outputs, asset_id: str, data: bytes) -> Path:
    """`data` restored as `asset_id`'s output through `Outputs.restore`, and recorded."""
    asset = project.asset(asset_id)
    written = outputs.restore(asset.out, project.root / asset.out, data)
    made = KeyRecord(hashlib.sha256(data).hexdigest(), len(data), "draft", asset.seed or 0)
    key = content_key(asset, "draft", asset.seed or 0, [])
    outputs.record(asset, key, asset.seed or 0, "draft", made, written, durable=False, urgent=False)
    return written


def test_restores_are_written_in_place_listed_first_and_forgotten_once_the_lock_names_them(
    project: Project,
) -> None:
    outputs = project.outputs()
    out_a, out_b = project.asset("a").out, project.asset("b").out
    (project.root / out_b).parent.mkdir(parents=True)
    (project.root / out_b).write_bytes(b"older b, a longer file")
    outputs.intend([out_a, out_b])
    listed = Store(project.root / ".flexforge").writing()
    assert listed[out_a] is None and listed[out_b] == file_stamp(str(project.root / out_b))
    assert restored(project, outputs, "a", b"restored a") == project.root / out_a
    restored(project, outputs, "b", b"restored b")
    # In place at once (no temp file, no rename), while the lock does not name them yet.
    assert (project.root / out_b).read_bytes() == b"restored b" and temps(project.root) == []
    assert not (project.root / "flexforge.lock").exists()
    outputs.close()
    assert set(project.on_disk()) == {"a", "b"}
    assert not (project.root / ".flexforge" / "writing.json").exists()
    assert project.store.interrupted_writes() == frozenset()


def test_a_restore_killed_before_its_lock_write_is_interrupted_not_edited(project: Project) -> None:
    outputs = project.outputs()
    out_a, out_b = project.asset("a").out, project.asset("b").out
    outputs.intend([out_a, out_b])
    restored(project, outputs, "a", b"restored a")
    # Killed here: no flush. b was listed but never touched, so it is nobody's concern.
    again = Store(project.root / ".flexforge", cache_dir=project.root / "user-cache")
    assert again.interrupted_writes() == {out_a}
    # The next run's close keeps what is still out of step with the lock, and only that.
    Outputs(read_lock(project.root / "flexforge.lock"), again).close()
    assert set(again.writing()) == {out_a}


def test_an_intent_record_not_sealed_on_this_machine_is_ignored(project: Project) -> None:
    # A repository can commit .flexforge/writing.json naming a file it wants overwritten.
    state = project.root / ".flexforge"
    state.mkdir()
    (state / "writing.json").write_text('{"v": 1, "mac": "0", "body": {"outs": {"assets/a.png": null}}}')
    (project.root / "assets").mkdir()
    (project.root / "assets/a.png").write_bytes(b"an agency's image")
    warnings: list[str] = []
    store = Store(state, cache_dir=project.root / "user-cache", warn=warnings.append)
    assert store.interrupted_writes() == frozenset()
    assert warnings and "writing.json" in warnings[0]


def test_after_a_checkout_meanwhile_restores_are_staged_not_written_in_place(project: Project) -> None:
    outputs = project.outputs(watch=(project.manifest.path, "flexforge.yaml"))
    out = project.asset("a").out
    (project.root / out).parent.mkdir(parents=True)
    (project.root / out).write_bytes(b"the other branch's a")
    outputs.intend([out])
    (project.root / "flexforge.yaml").write_text(MANIFEST + "# the other branch\n")
    written = restored(project, outputs, "a", b"restored a")
    assert written != project.root / out and (project.root / out).read_bytes() == b"the other branch's a"
    result = outputs.close()
    assert result.fatal and temps(project.root) == []
    assert (project.root / out).read_bytes() == b"the other branch's a"


def test_a_restore_arriving_after_close_is_staged_never_written_in_place(project: Project) -> None:
    # A worker thread still streaming when the build stops: the record was shortened at close,
    # so an in-place write then would be a change no record names.
    outputs = project.outputs()
    out = project.asset("a").out
    (project.root / out).parent.mkdir(parents=True)
    (project.root / out).write_bytes(b"the lock's a")
    outputs.intend([out])
    outputs.close()
    assert not (project.root / ".flexforge" / "writing.json").exists()
    late = outputs.restore(out, project.root / out, b"restored a")
    assert late != project.root / out and (project.root / out).read_bytes() == b"the lock's a"
    late.unlink()
