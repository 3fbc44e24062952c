"""Digests a fresh clone takes from git's index and the lock's git_blobs instead of hashing, and
what they may never do: hide an edit, or let a lying lock have an image paid or cached under a
key its bytes do not have."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexforge import gitblobs, reads
from flexforge.emulator.testing import RunningEmulator
from tests.helpers import Project, png
from tests.support.emulator import serve_builds

MANIFEST = """\
version: 1
settings:
  provider: {provider}
defaults: {{width: 256, height: 256}}
assets:
  hero:
    prompt: "A poster from image 1"
    references: [refs/a.png]
  side:
    prompt: "A side panel from image 1"
    references: [refs/b.png]
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{name}_NAME", "t")
        monkeypatch.setenv(f"GIT_{name}_EMAIL", "t@example.com")


def built(tmp_path: Path, provider: str = "draft") -> Project:
    """A project built and committed, references and outputs tracked."""
    project = Project(tmp_path / "origin")
    project.manifest(MANIFEST.format(provider=provider))
    png(project.root / "refs/a.png", color=(200, 30, 30))
    png(project.root / "refs/b.png", color=(30, 200, 30))
    git(project.root, "init", "-q", "-b", "main")
    result = project.run("build") if provider != "draft" else project.build()
    assert result.exit_code == 0, result.stderr
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "built")
    return project


def clone(origin: Project, where: Path) -> Project:
    # --no-local: a pack and a freshly written index, as a CI runner's checkout leaves them
    git(origin.root.parent, "clone", "-q", "--no-local", str(origin.root), str(where))
    # A file written in the clock tick git wrote its index in is "racy": hashed (by git, and
    # here) whatever the index says. A real clone writes most files ticks before its index; this
    # tiny one may not, so the index is written again a tick later, as `git status` would.
    time.sleep(0.05)
    git(where, "update-index", "-q", "--really-refresh")
    return Project(where)


def vouched() -> set[str]:
    """Files this process took digests of from git rather than reading them."""
    return {os.path.basename(p) for p, r in reads._reads.items() if r is not None and r.from_git}


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def test_blob_id_is_what_git_names_the_same_bytes(tmp_path: Path) -> None:
    for data in (b"", b"hello\n", os.urandom(70_000)):
        path = tmp_path / "f"
        path.write_bytes(data)
        named = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert gitblobs.blob_id(data) == named.stdout.strip()
        assert gitblobs.file_ids(path) == (hashlib.sha256(data).hexdigest(), named.stdout.strip())


def test_every_lock_entry_records_the_git_blobs_of_its_output_and_references(tmp_path: Path) -> None:
    project = built(tmp_path)
    for asset_id, ref in (("hero", "refs/a.png"), ("side", "refs/b.png")):
        entry = project.lock()["assets"][asset_id]
        out = project.read(entry["out"])
        assert entry["git_blobs"] == {
            gitblobs.blob_id(out): entry["sha256"],
            gitblobs.blob_id(project.read(ref)): hashlib.sha256(project.read(ref)).hexdigest(),
        }


def test_a_fresh_clone_plans_without_reading_its_references_or_outputs(tmp_path: Path) -> None:
    origin = built(tmp_path)
    copy = clone(origin, tmp_path / "runner")
    reads._reads.clear()
    assert set(copy.plan().values()) == {"none"}
    assert {"a.png", "b.png", "hero.png", "side.png"} <= vouched()


def test_a_reference_edited_after_the_clone_is_hashed_and_seen(tmp_path: Path) -> None:
    origin = built(tmp_path)
    copy = clone(origin, tmp_path / "runner")
    png(copy.root / "refs/a.png", color=(201, 30, 30))  # other bytes, same size
    reads._reads.clear()
    assert copy.plan() == {"hero": "regenerate", "side": "none"}
    assert "a.png" not in vouched()


def test_a_reference_changed_and_staged_is_not_vouched_for(tmp_path: Path) -> None:
    """git's index then agrees with the file, under a blob id the lock never paired."""
    origin = built(tmp_path)
    copy = clone(origin, tmp_path / "runner")
    png(copy.root / "refs/b.png", color=(30, 201, 30))
    git(copy.root, "add", "refs/b.png")
    reads._reads.clear()
    assert copy.plan() == {"hero": "none", "side": "regenerate"}
    assert "b.png" not in vouched()


def test_a_file_marked_assume_unchanged_is_hashed(tmp_path: Path) -> None:
    origin = built(tmp_path)
    copy = clone(origin, tmp_path / "runner")
    git(copy.root, "update-index", "--assume-unchanged", "refs/a.png")
    png(copy.root / "refs/a.png", color=(201, 30, 30))
    reads._reads.clear()
    assert copy.plan()["hero"] == "regenerate"


def test_a_lock_that_pairs_a_blob_with_another_digest_never_has_it_paid_for(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """A hand-edited (or hostile) lock says refs/a.png's blob has refs/b.png's sha256: the plan
    keys hero from the lie, but the bytes are hashed before anything is sent, so nothing is
    paid, nothing is cached under the wrong key, and the error names the lock."""
    origin = built(tmp_path, provider="emulator")
    lock_path = origin.root / "flexforge.lock"
    doc = json.loads(lock_path.read_text())
    a_blob = gitblobs.blob_id(origin.read("refs/a.png"))
    b_sha = hashlib.sha256(origin.read("refs/b.png")).hexdigest()
    doc["assets"]["hero"]["git_blobs"][a_blob] = b_sha
    lock_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    git(origin.root, "commit", "-qam", "a lying lock")
    copy = clone(origin, tmp_path / "runner")
    before = int(emu.stats()["submissions"])
    result = copy.run("build")
    assert int(emu.stats()["submissions"]) == before
    assert result.exit_code != 0
    assert "refs/a.png" in result.stderr and "git_blobs" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_adds_git_blobs_to_a_lock_written_before_them_but_frozen_does_not(tmp_path: Path) -> None:
    origin = built(tmp_path)
    lock_path = origin.root / "flexforge.lock"
    doc = json.loads(lock_path.read_text())
    for entry in doc["assets"].values():
        del entry["git_blobs"]
    old = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    lock_path.write_text(old)
    assert origin.build("--frozen").exit_code == 0
    assert lock_path.read_text() == old
    result = origin.build()
    assert result.exit_code == 0, result.stderr
    assert all(e["git_blobs"] for e in origin.lock()["assets"].values())


def test_git_blobs_outside_a_git_work_tree_are_not_added_by_a_no_op_build(tmp_path: Path) -> None:
    project = Project(tmp_path / "plain")
    project.manifest(MANIFEST.format(provider="draft"))
    png(project.root / "refs/a.png")
    png(project.root / "refs/b.png", color=(1, 2, 3))
    assert project.build().exit_code == 0
    doc = json.loads((project.root / "flexforge.lock").read_text())
    for entry in doc["assets"].values():
        del entry["git_blobs"]
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    (project.root / "flexforge.lock").write_text(text)
    assert project.build().exit_code == 0
    assert (project.root / "flexforge.lock").read_text() == text


def test_build_completes_an_entry_recorded_without_its_references_blob_ids(tmp_path: Path) -> None:
    """A restore on a machine that had hashed a reference records only the output's pair."""
    origin = built(tmp_path)
    lock_path = origin.root / "flexforge.lock"
    doc = json.loads(lock_path.read_text())
    ref_blob = gitblobs.blob_id(origin.read("refs/a.png"))
    del doc["assets"]["hero"]["git_blobs"][ref_blob]
    lock_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert origin.build().exit_code == 0
    assert ref_blob in origin.lock()["assets"]["hero"]["git_blobs"]


# -- reading git's index -----------------------------------------------------------------------


def _listed_by_git(root: Path) -> dict[bytes, tuple[str, tuple[int, int, int, int]]]:
    """What `git ls-files -s --debug` says of each stage-0 plain file, to check read_index by."""
    import re

    # -v: assume-unchanged files are tagged "h"; skip-worktree ones are "S" either way
    out = subprocess.run(["git", "ls-files", "-z", "-s", "-v", "--debug"], cwd=root, capture_output=True)
    entry = re.compile(
        rb"(\S+) (\d+) ([0-9a-f]+) (\d+)\t([^\0]*)\0  ctime: (\d+):(\d+)\n  mtime: (\d+):(\d+)\n"
        rb"  dev: \d+\tino: (\d+)\n  uid: \d+\tgid: \d+\n  size: (\d+)\tflags: ([0-9a-f]+)\n"
    )
    intent_to_add = 1 << 29  # git's CE_INTENT_TO_ADD, in the flags --debug prints
    found = {}
    for tag, mode, blob, stage, path, cs, cn, ms, mn, ino, size, flags in entry.findall(out.stdout):
        plain = mode in (b"100644", b"100755") and not int(flags, 16) & intent_to_add
        if tag == b"H" and stage == b"0" and plain:
            stat = (int(ino), int(size), int(ms) * 10**9 + int(mn), int(cs) * 10**9 + int(cn))
            found[path] = (blob.decode(), stat)
    return found


def _odd_repository(root: Path) -> None:
    """Files of every kind an index holds: nested, long, non-ASCII and executable names, a link,
    an assume-unchanged file, a skip-worktree file and an intent-to-add one."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for rel in ["a.txt", "dir/b.txt", "dir/sub/c.txt", "é/ünï.txt", "x" * 200 + ".txt", "run.sh"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("a.txt")
    (root / "assumed.txt").write_text("assumed")
    (root / "skipped.txt").write_text("skipped")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "files")
    (root / "intended.txt").write_text("later")
    git(root, "add", "-N", "intended.txt")
    git(root, "update-index", "--assume-unchanged", "assumed.txt")
    git(root, "update-index", "--skip-worktree", "skipped.txt")
    time.sleep(0.05)  # so that no file shares the index's clock tick
    git(root, "update-index", "-q", "--really-refresh")


@pytest.mark.parametrize("version", [2, 3, 4])
def test_read_index_agrees_with_git_for_each_index_version(tmp_path: Path, version: int) -> None:
    root = tmp_path / "repo"
    _odd_repository(root)
    git(root, "update-index", "--index-version", str(version))
    index = root / ".git/index"
    got = {
        p: (blob, stat) for p, blob, stat in gitblobs.read_index(index.read_bytes(), index.stat().st_mtime_ns)
    }
    assert got == _listed_by_git(root)
    assert b"dir/sub/c.txt" in got and "é/ünï.txt".encode() in got and b"run.sh" in got
    assert not {b"link", b"assumed.txt", b"skipped.txt", b"intended.txt"} & set(got)


def test_read_index_vouches_for_nothing_in_a_split_or_damaged_index(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _odd_repository(root)
    index = root / ".git/index"
    data = index.read_bytes()
    assert gitblobs.read_index(data, index.stat().st_mtime_ns)
    flipped = bytearray(data)
    flipped[100] ^= 1
    assert gitblobs.read_index(bytes(flipped), index.stat().st_mtime_ns) == []
    assert gitblobs.read_index(data[: len(data) // 2], index.stat().st_mtime_ns) == []
    git(root, "update-index", "--split-index")
    assert gitblobs.read_index(index.read_bytes(), index.stat().st_mtime_ns) == []


def test_read_index_leaves_files_written_in_the_index_clock_tick_to_hashing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _odd_repository(root)
    index = root / ".git/index"
    stamps = [stat[2] for _, _, stat in gitblobs.read_index(index.read_bytes(), index.stat().st_mtime_ns)]
    assert stamps
    assert gitblobs.read_index(index.read_bytes(), min(stamps)) == []


def test_a_project_in_a_subfolder_is_vouched_for_by_its_own_paths(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _odd_repository(root)
    entries = gitblobs._index_entries(os.path.realpath(root / "dir"))
    assert set(entries) == {os.path.realpath(root / "dir/b.txt"), os.path.realpath(root / "dir/sub/c.txt")}


def test_read_index_refuses_a_v4_index_whose_paths_only_grow(tmp_path: Path) -> None:
    """Regression: a version 4 index names each path as the last one's plus a suffix; one made to
    grow them without end (20,000 entries of 100 more bytes each) cost quadratic copying. A path
    longer than PATH_MAX is no index git wrote: nothing is vouched for."""
    import hashlib
    import struct

    entries = []
    for _ in range(20_000):
        fixed = struct.pack(">10I20sH", 1, 0, 1, 0, 0, 1, 0o100644, 0, 0, 1, bytes(20), 0)
        entries.append(fixed + b"\x00" + b"a" * 100 + b"\x00")  # strip nothing, add 100 bytes
    body = b"DIRC" + struct.pack(">II", 4, len(entries)) + b"".join(entries)
    data = body + hashlib.sha1(body).digest()

    assert gitblobs.read_index(data, 10**18) == []


def test_an_entry_git_smudged_vouches_for_nothing_even_when_the_file_is_empty(tmp_path: Path) -> None:
    """Regression: git zeroes the size of a "racily clean" entry whose file changed in the clock
    tick of its stat (racy-git.txt), and from then on takes a size-0 entry of a non-empty blob
    as changed. A file emptied in that tick keeps the other stat fields: the index's stat then
    matches the file's, but the blob is the old bytes."""
    import struct

    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "ref.png").write_bytes(b"the old bytes")
    git(root, "add", "ref.png")
    (root / "ref.png").write_bytes(b"")  # emptied just after git's stat...
    st = os.stat(root / "ref.png")
    index = root / ".git/index"
    data = bytearray(index.read_bytes())
    # ...in the same tick: the one entry as git's smudge leaves it (the stat then, size zeroed)
    ctime, mtime = divmod(st.st_ctime_ns, 10**9), divmod(st.st_mtime_ns, 10**9)
    struct.pack_into(">4I", data, 12, *ctime, *mtime)
    struct.pack_into(">I", data, 12 + 20, st.st_ino & 0xFFFFFFFF)
    struct.pack_into(">I", data, 12 + 36, 0)
    data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()
    time.sleep(0.05)  # the index written in a later tick than the file
    index.write_bytes(bytes(data))
    assert subprocess.run(["git", "diff", "--quiet"], cwd=root).returncode == 1  # git: changed

    assert os.path.realpath(root / "ref.png") not in gitblobs._index_entries(os.path.realpath(root))


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero"])
def test_an_index_that_is_not_a_plain_file_vouches_for_nothing_without_blocking(
    tmp_path: Path, kind: str
) -> None:
    """Regression: `.git/index` a FIFO (a repository unpacked from an archive) blocked the plan
    forever in open(); `git ls-files` had given up after GIT_TIMEOUT. A link to /dev/zero read
    512 MiB of zeros first. In a child process: a hang fails the test instead of the run."""
    import sys

    root = tmp_path / "repo"
    _odd_repository(root)
    index = root / ".git/index"
    index.unlink()
    os.mkfifo(index) if kind == "fifo" else index.symlink_to("/dev/zero")
    code = f"from flexforge import gitblobs; print(gitblobs._index_entries({os.path.realpath(root)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{}"
