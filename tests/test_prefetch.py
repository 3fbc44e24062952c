"""GitPrefetch: many restores from git history streamed in one pass, each taken by its restore."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from flexforge.history import History
from flexforge.lockfile import Lock, read_lock
from flexforge.manifest import Asset, load_manifest
from flexforge.planner import RESTORE, Step
from flexforge.prefetch import GitPrefetch
from flexforge.sources import GIT, Source, Sources
from flexforge.store import Store

N = 4


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (shade, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class Repo:
    """A project whose committed outputs were then overwritten: every one is in git history."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.blobs: list[str | None] = []  # the git blob id each staging was given
        git(root, "init", "-q", "-b", "main")
        assets = "".join(f"  a{i}: {{prompt: 'p{i}', seed: 1}}\n" for i in range(N))
        (root / "flexforge.yaml").write_text(
            f"version: 1\ndefaults: {{width: 64, height: 64}}\nassets:\n{assets}"
        )
        (root / "assets").mkdir()
        self.data = {f"a{i}": png(i) for i in range(N)}
        for asset_id, data in self.data.items():
            (root / f"assets/{asset_id}.png").write_bytes(data)
        git(root, "add", "-A")
        git(root, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "built")
        self.commit = git(root, "rev-parse", "HEAD")
        for asset_id in self.data:
            (root / f"assets/{asset_id}.png").write_bytes(png(200))
        self.root = root
        self.manifest = load_manifest(root / "flexforge.yaml")
        self.store = Store(root / ".flexforge", cache_dir=root / "user-cache")
        lock: Lock = read_lock(root / "flexforge.lock")
        self.sources = Sources(lock, self.store, lambda: History.open(root, root / "flexforge.lock", None))

    def source(self, asset_id: str, sha: str | None = None) -> Source:
        data = self.data[asset_id]
        sha = sha or hashlib.sha256(data).hexdigest()
        return Source(GIT, sha, len(data), f"assets/{asset_id}.png", self.commit)

    def step(self, asset_id: str, source: Source | None = None) -> Step:
        return Step(asset=self.asset(asset_id), action=RESTORE, source=source or self.source(asset_id))

    def asset(self, asset_id: str) -> Asset:
        return self.manifest.assets[asset_id]

    def stage(self, asset: Asset, data: bytes, blob: str | None) -> Path:
        from flexforge.fsutil import stage_bytes
        from flexforge.gitblobs import blob_id

        assert blob == blob_id(data)  # git named the bytes it gave: no need to hash them again
        self.blobs.append(blob)
        return stage_bytes(self.root / asset.out, data, durable=False)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def temps(root: Path) -> list[Path]:
    return sorted(root.rglob("*.ff-*.tmp"))


def test_every_planned_restore_takes_its_verified_bytes(repo: Repo) -> None:
    async def run() -> dict[str, bytes]:
        prefetch = GitPrefetch(repo.sources, repo.stage)
        prefetch.start([repo.step(a) for a in repo.data])
        got = {}
        for asset_id in reversed(list(repo.data)):  # taken in any order
            taken = await prefetch.take(repo.asset(asset_id), repo.source(asset_id))
            assert taken is not None and taken[1] is None and taken[0] is not None
            got[asset_id] = taken[0].read_bytes()
            taken[0].unlink()
        prefetch.close()
        return got

    assert asyncio.run(run()) == repo.data
    assert len(repo.blobs) == len(repo.data)
    repo.sources.close()


def test_bytes_that_are_not_the_recorded_ones_are_never_staged(repo: Repo) -> None:
    wrong = repo.source("a1", sha="0" * 64)  # a lock naming other bytes than the commit holds

    async def run() -> tuple[Path | None, str | None] | None:
        prefetch = GitPrefetch(repo.sources, repo.stage)
        prefetch.start([repo.step("a0"), repo.step("a1", wrong)])
        taken = await prefetch.take(repo.asset("a1"), wrong)
        prefetch.close()
        return taken

    assert asyncio.run(run()) == (None, "damaged or gone")
    assert temps(repo.root) == []  # a0, never taken, was removed by close()
    repo.sources.close()


def test_a_restore_from_another_source_than_planned_fetches_on_its_own(repo: Repo) -> None:
    async def run() -> object:
        prefetch = GitPrefetch(repo.sources, repo.stage)
        prefetch.start([repo.step(a) for a in repo.data])
        other = Source("cache", repo.source("a0").sha256, 3)
        taken = await prefetch.take(repo.asset("a0"), other)
        prefetch.close()
        return taken

    assert asyncio.run(run()) is None
    assert temps(repo.root) == []
    repo.sources.close()


def test_a_stopped_build_leaves_no_staged_file(repo: Repo) -> None:
    async def run() -> None:
        prefetch = GitPrefetch(repo.sources, repo.stage)
        prefetch.start([repo.step(a) for a in repo.data])
        prefetch.close()  # stopped at once: what the worker stages after this, it removes itself
        await asyncio.sleep(0.5)

    asyncio.run(run())  # asyncio.run waits for the worker thread
    assert temps(repo.root) == []
    repo.sources.close()


def test_a_staging_error_fails_that_restore(repo: Repo) -> None:
    def full_disk(asset: Asset, data: bytes, blob: str | None) -> Path:
        raise OSError(28, "No space left on device")

    async def run() -> None:
        prefetch = GitPrefetch(repo.sources, full_disk)
        prefetch.start([repo.step(a) for a in repo.data])
        with pytest.raises(OSError, match="No space"):
            await prefetch.take(repo.asset("a2"), repo.source("a2"))
        prefetch.close()

    asyncio.run(run())
    repo.sources.close()
