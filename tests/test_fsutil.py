"""fsutil: atomic writes, staged installs, stale temp files, and reading only plain files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from flexforge.fsutil import (
    FileTooLarge,
    NotRegularFile,
    atomic_write,
    install,
    is_temp,
    overwrite,
    read_regular,
    remove_stale_temps,
    sha256_bytes,
    sha256_file,
    stage_bytes,
    staging,
    sync_files,
)


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "lock.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["lock.json"]


def test_a_failed_staging_removes_its_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), staging(target) as (f, _):
        f.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_staged_bytes_appear_only_when_installed(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    staged = stage_bytes(target, b"new")
    assert not target.exists() and staged.read_bytes() == b"new"
    install(staged, target)
    assert target.read_bytes() == b"new" and not staged.exists()


def test_stale_temps_removed_only_for_named_files_and_our_own_shape(tmp_path: Path) -> None:
    ours = stage_bytes(tmp_path / "a.png", b"x")  # what a kill would leave
    other = stage_bytes(tmp_path / "b.png", b"y")
    user = tmp_path / ".a.png.backup.tmp"
    user.write_bytes(b"mine")
    remove_stale_temps(tmp_path, {"a.png"})
    assert not ours.exists() and other.exists() and user.exists()


def test_read_regular_refuses_links_folders_fifos_and_big_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"12345")
    assert read_regular(plain, 5) == b"12345"
    with pytest.raises(FileTooLarge):
        read_regular(plain, 4)
    link = tmp_path / "link"
    link.symlink_to(plain)
    with pytest.raises(NotRegularFile, match="symbolic link"):
        read_regular(link, 100)
    with pytest.raises(NotRegularFile, match="folder"):
        read_regular(tmp_path, 100)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="special file"):
        read_regular(fifo, 100)  # never blocks waiting for a writer


def test_digests_agree_with_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_sync_files_takes_one_sync_per_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand restored outputs cost one syncfs, not a thousand fsyncs; a file gone meanwhile
    is skipped (its rename says so)."""
    from flexforge import fsutil

    staged = [stage_bytes(tmp_path / f"o{i}.png", b"x" * i, durable=False) for i in range(5)]
    calls: list[int] = []
    real = fsutil._syncfs()
    if real is None:
        pytest.skip("no syncfs(2) on this platform")
    monkeypatch.setattr(fsutil, "_syncfs", lambda: lambda fd: calls.append(fd) or real(fd))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(-1))
    sync_files([*staged, tmp_path / "gone.png"])
    assert len(calls) == 1 and calls[0] >= 0


def test_sync_files_falls_back_to_fsync_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flexforge import fsutil

    staged = [stage_bytes(tmp_path / f"o{i}.png", b"x", durable=False) for i in range(3)]
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fsutil, "_syncfs", lambda: None)  # macOS, or a libc without it
    monkeypatch.setattr(os, "fsync", fsync)
    sync_files(staged)
    assert sorted(synced) == sorted(str(p) for p in staged)


def test_a_staged_file_honours_the_umask_and_never_opens_what_is_there(tmp_path: Path) -> None:
    """Outputs are committed and shared: 0666 less the umask, as any tool would write them."""
    old = os.umask(0o027)
    try:
        staged = stage_bytes(tmp_path / "deep" / "er" / "out.png", b"x")  # folders made as needed
    finally:
        os.umask(old)
    assert staged.stat().st_mode & 0o777 == 0o640
    assert staged.name.startswith(".out.png.ff-") and staged.name.endswith(".tmp")
    install(staged, tmp_path / "deep" / "er" / "out.png")
    assert (tmp_path / "deep" / "er" / "out.png").read_bytes() == b"x"


def test_overwrite_writes_in_place_shorter_or_longer_and_makes_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "assets" / "a.png"
    overwrite(path, b"first version, long")  # folders made
    inode = path.stat().st_ino
    overwrite(path, b"short")
    assert path.read_bytes() == b"short" and path.stat().st_ino == inode  # the same file, truncated
    overwrite(path, b"a longer second version")
    assert path.read_bytes() == b"a longer second version" and path.stat().st_ino == inode
    assert not is_temp(path) and list(path.parent.iterdir()) == [path]


def test_overwrite_never_writes_through_a_link_planted_at_the_path(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    path = tmp_path / "assets" / "a.png"
    path.parent.mkdir()
    path.symlink_to(outside)
    with pytest.raises(NotRegularFile, match="symbolic link"):
        overwrite(path, b"restored")
    dangling = tmp_path / "assets" / "b.png"
    dangling.symlink_to(tmp_path / "new-file-outside")
    with pytest.raises(NotRegularFile, match="symbolic link"):
        overwrite(dangling, b"restored")
    assert outside.read_bytes() == b"precious" and not (tmp_path / "new-file-outside").exists()
    assert path.is_symlink() and dangling.is_symlink()


def test_overwrite_refuses_a_fifo_without_blocking_and_a_folder(tmp_path: Path) -> None:
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="not a plain file"):
        overwrite(fifo, b"restored")  # no reader: an open for writing would block forever
    folder = tmp_path / "b.png"
    folder.mkdir()
    with pytest.raises(NotRegularFile):
        overwrite(folder, b"restored")


def test_overwrite_leaves_the_other_names_of_a_hard_linked_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"shared bytes")
    other = tmp_path / "elsewhere.png"
    os.link(path, other)
    overwrite(path, b"restored")
    assert path.read_bytes() == b"restored" and other.read_bytes() == b"shared bytes"
    assert path.stat().st_nlink == 1 and other.stat().st_nlink == 1
