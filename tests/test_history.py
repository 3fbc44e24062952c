"""Git history as an object store: the lock's history indexed by key, blobs read back, cached."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from flexforge.gitblobs import blob_id
from flexforge.history import History
from flexforge.lockfile import Lock, LockEntry


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def init(repo: Path) -> None:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")


def commit_version(project: Path, key: str, data: bytes, message: str) -> str:
    (project / "assets").mkdir(parents=True, exist_ok=True)
    (project / "assets/hero.png").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    entry = LockEntry(
        key, {}, 1, "flux-2-flex", "flux", "bfl", "assets/hero.png", sha, len(data), "t-1", 0.03
    )
    (project / "flexforge.lock").write_bytes(Lock(project / "flexforge.lock", {"hero": entry}).render())
    git(project, "add", "-A")
    git(project, "commit", "-qm", message)
    return git(project, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init(tmp_path / "repo")
    return tmp_path / "repo"


def test_every_lock_version_is_indexed_and_its_bytes_read_back(repo: Path, tmp_path: Path) -> None:
    project = repo / "site"  # the project folder need not be the repository's top
    first = commit_version(project, "1" * 64, b"first image", "one")
    commit_version(project, "2" * 64, b"second image", "two")
    history = History.open(project, project / "flexforge.lock", tmp_path / "cache")
    assert history is not None
    [source] = history.lookup("1" * 64)
    assert (source.commit, source.path, source.cost_usd, source.origin) == (
        first,
        "assets/hero.png",
        0.03,
        "hero",
    )
    assert history.read(first, "assets/hero.png", len(b"first image")) == b"first image"
    assert history.read(first, "assets/hero.png", 3) is None  # the size the lock says, or nothing
    assert history.read(first, "assets/none.png", 3) is None
    assert history.lookup("3" * 64) == []
    history.close()


def test_index_is_cached_by_head_and_extended_when_head_moves(repo: Path, tmp_path: Path) -> None:
    commit_version(repo, "1" * 64, b"first", "one")
    cache = tmp_path / "cache"
    History.open(repo, repo / "flexforge.lock", cache).lookup("1" * 64)  # type: ignore[union-attr]
    [stored] = list(cache.iterdir())
    doc = json.loads(stored.read_text())
    assert doc["head"] == git(repo, "rev-parse", "HEAD") and "1" * 64 in doc["keys"]
    commit_version(repo, "2" * 64, b"second", "two")
    history = History.open(repo, repo / "flexforge.lock", cache)
    assert history is not None and history.lookup("1" * 64) and history.lookup("2" * 64)
    assert json.loads(stored.read_text())["head"] == git(repo, "rev-parse", "HEAD")


def test_side_branch_a_merge_discarded_is_still_history(repo: Path, tmp_path: Path) -> None:
    commit_version(repo, "1" * 64, b"base", "base")
    git(repo, "checkout", "-qb", "side")
    commit_version(repo, "2" * 64, b"side image", "side")
    git(repo, "checkout", "-q", "main")
    commit_version(repo, "3" * 64, b"main image", "main")
    git(repo, "merge", "-q", "-s", "ours", "side", "-m", "merge, keeping ours")
    history = History.open(repo, repo / "flexforge.lock", None)
    assert history is not None and history.lookup("2" * 64)


def test_a_broken_lock_in_one_commit_is_skipped(repo: Path) -> None:
    commit_version(repo, "1" * 64, b"good", "good")
    (repo / "flexforge.lock").write_text("{not json")
    git(repo, "commit", "-qam", "broken")
    history = History.open(repo, repo / "flexforge.lock", None)
    assert history is not None and len(history.lookup("1" * 64)) == 1


def test_no_repository_or_no_commit_is_no_history(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert History.open(tmp_path / "plain", tmp_path / "plain/flexforge.lock", None) is None
    init(tmp_path / "empty")
    assert History.open(tmp_path / "empty", tmp_path / "empty/flexforge.lock", None) is None


def test_shallow_clone_has_only_its_depth(repo: Path, tmp_path: Path) -> None:
    commit_version(repo, "1" * 64, b"old", "old")
    commit_version(repo, "2" * 64, b"new", "new")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    history = History.open(shallow, shallow / "flexforge.lock", None)
    assert history is not None
    assert history.lookup("1" * 64) == [] and history.lookup("2" * 64)


def test_a_shallow_clone_made_deeper_sees_the_history_it_fetched(repo: Path, tmp_path: Path) -> None:
    """`git fetch --unshallow` leaves HEAD where it was: the index cached for that HEAD must not
    go on hiding the older commits (a reverted prompt would be paid for again)."""
    commit_version(repo, "1" * 64, b"old", "old")
    commit_version(repo, "2" * 64, b"new", "new")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    cache = tmp_path / "cache"
    history = History.open(shallow, shallow / "flexforge.lock", cache)
    assert history is not None and history.lookup("1" * 64) == []
    git(shallow, "fetch", "-q", "--unshallow")
    history = History.open(shallow, shallow / "flexforge.lock", cache)
    assert history is not None and history.lookup("1" * 64), "the deepened history is not indexed"


def test_a_history_of_huge_locks_is_read_only_up_to_a_byte_budget(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed history of many large lock versions (a hostile repository: each 64 MiB, two
    thousand of them, compressing to little) must not make one plan parse gigabytes: older
    versions past the budget simply are not sources."""
    import flexforge.history

    for i in range(1, 5):
        commit_version(repo, str(i) * 64, b"image %d" % i, f"v{i}")
    size = len((repo / "flexforge.lock").read_bytes())
    monkeypatch.setattr(flexforge.history, "MAX_HISTORY_BYTES", 2 * size)
    history = History.open(repo, repo / "flexforge.lock", None)
    assert history is not None
    assert history.lookup("4" * 64) and history.lookup("3" * 64)
    assert history.lookup("2" * 64) == [] and history.lookup("1" * 64) == []


def test_paths_with_newlines_never_reach_the_batch_protocol(repo: Path) -> None:
    first = commit_version(repo, "1" * 64, b"x", "one")
    history = History.open(repo, repo / "flexforge.lock", None)
    assert history is not None
    assert history.read(first, "assets/hero.png\nHEAD:flexforge.lock", 1) is None
    assert history.read(first, "assets/hero.png", 1) == b"x"  # the stream is still in step


@pytest.mark.parametrize("list_tree_from", [1, 100])  # blob ids from ls-tree, or commit:path
def test_read_many_streams_every_version_in_order(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, list_tree_from: int
) -> None:
    """One pass for many restores: each answer in the order asked, and what `read` would give
    (the size the lock says, a missing path, a folder, a link, a commit that is not one: None)."""
    monkeypatch.setattr("flexforge.history.LIST_TREE_FROM", list_tree_from)
    project = repo / "site"
    first = commit_version(project, "1" * 64, b"first image", "one")
    (project / "assets/link.png").symlink_to("hero.png")
    second = commit_version(project, "2" * 64, b"second image", "two")
    history = History.open(project, project / "flexforge.lock", tmp_path / "cache")
    assert history is not None
    wanted = [
        (second, "assets/hero.png", len(b"second image")),
        (first, "assets/hero.png", len(b"first image")),
        (first, "assets/hero.png", 3),  # not the recorded size
        (first, "assets/none.png", 3),
        (second, "assets", 4),  # a folder
        (second, "assets/link.png", len("hero.png")),  # a link's blob is its target: never an output
        ("f" * 40, "assets/hero.png", 11),  # no such commit
        ("HEAD", "assets/hero.png", len(b"second image")),  # not an object id: read one by one
        (first, "assets/hero.png", len(b"first image")),  # the same bytes twice
        (first, "assets/no such.png", 3),  # a name with a space, missing
        (second, "assets/hero.png", len(b"second image")),  # still in step after all that
    ]
    streamed = list(history.read_many(wanted))
    # Each with git's id of its bytes, what gitblobs.blob_id computes from them.
    assert all(found is None or found[1] == blob_id(found[0]) for found in streamed)
    got = [None if found is None else found[0] for found in streamed]
    first_image, second_image = b"first image", b"second image"
    # A link's blob is its target's name: ls-tree leaves it out, `commit:path` (as `read`) gives
    # those bytes, which the caller's sha256 check refuses.
    link = None if list_tree_from == 1 else b"hero.png"
    expected = [second_image, first_image, None, None, None, link, None, None, first_image]
    assert got == [*expected, None, second_image]
    history.close()


def test_read_many_stopped_early_leaves_no_git_running(repo: Path, tmp_path: Path) -> None:
    first = commit_version(repo, "1" * 64, b"x" * 300_000, "big")  # more than a pipe holds
    history = History.open(repo, repo / "flexforge.lock", None)
    assert history is not None
    stream = history.read_many([(first, "assets/hero.png", 300_000)] * 50)
    assert next(stream) == (b"x" * 300_000, blob_id(b"x" * 300_000))
    stream.close()  # the reader stops: git and the thread feeding it are stopped too
    children = subprocess.run(
        ["ps", "-o", "args=", "--ppid", str(os.getpid())], capture_output=True, text=True
    )
    assert "cat-file --batch --buffer" not in children.stdout


def test_a_lock_version_with_many_outputs_keeps_only_the_files_its_commit_holds(
    repo: Path, tmp_path: Path
) -> None:
    """Listed once per commit (ls-tree -l) rather than asked one path at a time: the same answer,
    a file missing or of another size is no source."""
    from flexforge.history import LIST_TREE_FROM

    (repo / "assets").mkdir()
    (repo / ".gitignore").write_text("assets/ignored-*\n")
    entries = {}
    for i in range(LIST_TREE_FROM + 2):
        name = f"ignored-{i}.png" if i < 2 else f"a{i}.png"
        data = f"image {i}".encode()
        (repo / "assets" / name).write_bytes(data)
        size = len(data) + (1 if i == 2 else 0)  # the lock says another size than the commit holds
        entries[f"a{i}"] = LockEntry(
            f"{i:064x}",
            {},
            1,
            "flux-2-flex",
            "flux",
            "bfl",
            f"assets/{name}",
            hashlib.sha256(data).hexdigest(),
            size,
            None,
            None,
        )
    (repo / "flexforge.lock").write_bytes(Lock(repo / "flexforge.lock", entries).render())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "many outputs, two ignored")
    history = History.open(repo, repo / "flexforge.lock", tmp_path / "cache")
    assert history is not None
    found = {i for i in range(LIST_TREE_FROM + 2) if history.lookup(f"{i:064x}")}
    assert found == set(range(3, LIST_TREE_FROM + 2))
    history.close()


def test_the_working_locks_bytes_are_not_parsed_again_nor_its_unsaved_entries_indexed(
    repo: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from flexforge.lockfile import read_lock

    commit_version(repo, "1" * 64, b"first image", "one")
    commit_version(repo, "2" * 64, b"second image", "two")
    lock = read_lock(repo / "flexforge.lock")  # the same bytes as HEAD's
    # Changed in memory by a build, not saved: history must still say what the commit holds.
    lock.set_entry("hero", replace(lock.entries["hero"], key="3" * 64))
    plain = History.open(repo, repo / "flexforge.lock", None)
    reusing = History.open(repo, repo / "flexforge.lock", None, lock)
    assert plain is not None and reusing is not None
    assert reusing.index() == plain.index()
    assert [s.sha256 for s in reusing.lookup("2" * 64)] == [hashlib.sha256(b"second image").hexdigest()]
    assert reusing.lookup("3" * 64) == []
    assert lock.entries_of(b"other bytes") is None


def test_the_newest_committed_seed_comes_first_after_the_index_is_extended(
    repo: Path, tmp_path: Path
) -> None:
    """A reseeded asset whose entry is later lost (lock deleted, `--ours`) takes back the seed
    its newest commit pinned, not the one `--reseed` replaced: the same answer whether the
    index was cached before the reseed (extended since) or built afresh."""

    def commit_seed(key: str, seed: int, data: bytes) -> None:
        (repo / "hero.png").write_bytes(data)
        entry = LockEntry(
            key, {}, seed, "flux-2-flex", "flux", "bfl", "hero.png", hashlib.sha256(data).hexdigest(),
            len(data), "t-1", 0.03,
        )  # fmt: skip
        (repo / "flexforge.lock").write_bytes(Lock(repo / "flexforge.lock", {"hero": entry}).render())
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"seed {seed}")

    commit_seed("1" * 64, 1, b"the image reseeded away")
    cache = tmp_path / "cache"
    History.open(repo, repo / "flexforge.lock", cache).index()  # type: ignore[union-attr]
    commit_seed("2" * 64, 2, b"the approved image")
    extended = History.open(repo, repo / "flexforge.lock", cache)
    fresh = History.open(repo, repo / "flexforge.lock", None)
    assert extended is not None and fresh is not None
    assert fresh.seeds_of("hero", None)[0] == ("2" * 64, 2)
    assert extended.seeds_of("hero", None) == fresh.seeds_of("hero", None)
    commit_seed("1" * 64, 1, b"the image reseeded away")  # the reseed reverted: seed 1 again
    extended = History.open(repo, repo / "flexforge.lock", cache)
    assert extended is not None and extended.seeds_of("hero", None)[0] == ("1" * 64, 1)


def test_a_finished_rebase_leaves_the_history_whole(repo: Path, tmp_path: Path) -> None:
    """git keeps REBASE_HEAD after a rebase that stopped is finished, naming a commit nothing
    reaches, which `git gc` then prunes: not a rebase in progress, and not a reason to see no
    history at all (every image in it would be paid for again)."""
    first = commit_version(repo, "1" * 64, b"first image", "one")
    (repo / "notes.txt").write_text("base\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "notes")
    git(repo, "checkout", "-qb", "side")
    (repo / "notes.txt").write_text("side\n")
    git(repo, "commit", "-qam", "side notes")
    git(repo, "checkout", "-q", "main")
    (repo / "notes.txt").write_text("main\n")
    git(repo, "commit", "-qam", "main notes")
    git(repo, "checkout", "-q", "side")
    assert subprocess.run(["git", "rebase", "main"], cwd=repo, capture_output=True).returncode != 0
    during = History.open(repo, repo / "flexforge.lock", None)
    assert during is not None and during.tips[1:] == ((repo / ".git/REBASE_HEAD").read_text().strip(),)
    (repo / "notes.txt").write_text("both\n")
    git(repo, "add", "notes.txt")
    subprocess.run(
        ["git", "rebase", "--continue"],
        cwd=repo,
        check=True,
        capture_output=True,
        env={**os.environ, "GIT_EDITOR": "true"},
    )
    assert (repo / ".git/REBASE_HEAD").exists()  # what git leaves behind
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    history = History.open(repo, repo / "flexforge.lock", tmp_path / "cache")
    assert history is not None
    [source] = history.lookup("1" * 64)
    assert source.commit == first
    assert history.tips == (history.head,)  # no rebase in progress


def test_lock_versions_from_before_the_project_folder_moved_are_still_history(
    repo: Path, tmp_path: Path
) -> None:
    """`git mv site web`: the lock's history at `site/` is followed through the move (twice),
    its outputs read from where they were then, and the index cached with where that was."""
    first = commit_version(repo / "site", "1" * 64, b"first image", "one")
    commit_version(repo / "site", "2" * 64, b"second image", "two")
    git(repo, "mv", "site", "web")
    git(repo, "commit", "-qm", "move")
    git(repo, "mv", "web", "www")
    git(repo, "commit", "-qm", "move again")
    third = commit_version(repo / "www", "3" * 64, b"third image", "three")
    project = repo / "www"
    history = History.open(project, project / "flexforge.lock", tmp_path / "cache")
    assert history is not None
    [source] = history.lookup("1" * 64)
    assert (source.commit, source.path) == (first, "assets/hero.png")
    assert history.read(first, "assets/hero.png", len(b"first image")) == b"first image"
    assert [data for data, _ in filter(None, history.read_many([(first, "assets/hero.png", 11)]))] == [
        b"first image"
    ]
    assert history.lookup("3" * 64)[0].commit == third
    history.close()
    again = History.open(project, project / "flexforge.lock", tmp_path / "cache")  # from the cache
    assert again is not None
    assert again.read(again.lookup("1" * 64)[0].commit, "assets/hero.png", 11) == b"first image"
    again.close()
