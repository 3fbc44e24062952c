"""Files read once: the digest and ends from one pass, reused only for the file as it was read."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from flexforge import reads
from flexforge.fsutil import CHUNK, NotRegularFile
from flexforge.noop import file_stamp
from flexforge.store import Store


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1023, 1024, 1025, CHUNK - 1, CHUNK + 17, 3 * CHUNK + 5])
def test_one_pass_gives_the_digest_the_head_and_the_tail(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    read = reads.read_file(str(path), ends=True)
    assert read is not None
    assert read.sha256 == hashlib.sha256(data).hexdigest()
    assert read.head == data[: reads.HEAD] and read.tail == data[-reads.TAIL :] if data else read.tail == b""
    assert list(read.stamp) == file_stamp(str(path)) and read.size == size
    plain = reads.read_file(str(path))
    assert plain is not None and plain.sha256 == read.sha256 and plain.head == plain.tail == b""


def test_a_file_of_another_size_or_too_large_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    assert reads.read_file(str(path), size=99) is None
    assert reads.read_file(str(path), max_size=99) is None
    assert reads.read_file(str(path), size=100, max_size=100) is not None


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile):
        reads.read_file(str(fifo))
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(reads.read_all([(str(fifo), {}), (str(fifo), {})])))
    worker.start()
    worker.join(timeout=30)
    assert done == [[None, None]]


@pytest.mark.parametrize("workers", [1, 3])
def test_reading_on_the_pool_gives_what_reading_one_by_one_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(reads, "WORKERS", workers)
    paths = []
    for i in range(40):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(os.urandom(i * 5000))
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.bin"))
    pooled = reads.read_all([(p, {"ends": True}) for p in paths])
    one_by_one = [reads.read_file(p, ends=True) for p in paths[:-1]]
    assert pooled == [*one_by_one, None]


def test_a_digest_is_reused_only_for_the_file_as_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"before")
    reads.read_all([(str(path), {}), (str(tmp_path / "other"), {})])
    stamp = file_stamp(str(path))
    assert stamp is not None
    read = reads.digest(str(path), stamp)
    assert read is not None and read.sha256 == hashlib.sha256(b"before").hexdigest()
    path.write_bytes(b"after!")  # same size: the stamp's mtime and ctime tell it changed
    os.utime(path, ns=(stamp[2], stamp[2]))  # even with its mtime put back
    now = file_stamp(str(path))
    assert now is not None and now != stamp
    assert reads.digest(str(path), now) is None


def test_the_store_hashes_again_a_file_changed_since_the_plan_read_it(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "refs").mkdir(parents=True)
    ref = root / "refs" / "a.png"
    ref.write_bytes(b"one")
    store = Store(root / ".flexforge", cache_dir=tmp_path / "cache")
    store.prefetch([("refs/a.png", None), ("refs/missing.png", None)])
    assert store.digest("refs/a.png") == hashlib.sha256(b"one").hexdigest()
    os.replace(_written(root / "refs" / "b.tmp", b"two"), ref)  # another inode
    fresh = Store(root / ".flexforge", cache_dir=tmp_path / "cache2")
    assert fresh.digest("refs/a.png") == hashlib.sha256(b"two").hexdigest()
    assert fresh.digest("refs/missing.png") is None


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
