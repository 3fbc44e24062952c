"""Reading files at a revision through one `git cat-file --batch`, on real repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexforge.gitrev import GitError, GitRevisions
from tests.helpers import Project
from tests.support.kit import commit, git


@pytest.fixture
def repo(project: Project) -> Project:
    git(project.root, "init", "-q", "-b", "main")
    project.write("sub/a.txt", "alpha\n")
    project.write("sub/big.bin", "x" * 5000)
    project.write("sub/b.txt", "beta\n")
    commit(project, "first")
    return project


def test_reads_files_relative_to_a_project_in_a_subfolder(repo: Project) -> None:
    with GitRevisions(repo.root / "sub", repo.root / "sub" / "flexforge.lock") as g:
        head = g.commit("HEAD")
        assert g.prefix == "sub/"
        assert g.read(head, "a.txt", 100) == b"alpha\n"
        assert g.read(head, "missing.txt", 100) is None
        assert g.read(head, ".", 100) is None  # a tree, not a file


def test_a_blob_over_the_limit_is_skipped_and_the_stream_stays_in_step(repo: Project) -> None:
    with GitRevisions(repo.root / "sub", repo.root / "sub" / "flexforge.lock") as g:
        head = g.commit("HEAD")
        assert g.read(head, "big.bin", 100) is None
        assert g.read(head, "b.txt", 100) == b"beta\n"  # the skipped bytes were consumed
        assert g.read(head, "big.bin", 10_000) == b"x" * 5000


def test_paths_leaving_the_project_or_breaking_the_protocol_are_refused(repo: Project) -> None:
    with GitRevisions(repo.root / "sub", repo.root / "sub" / "flexforge.lock") as g:
        head = g.commit("HEAD")
        for bad in ("../sub/a.txt", "/etc/passwd", "a.txt\nHEAD:sub/b.txt", "", "x/../../a"):
            assert g.read(head, bad, 100) is None
        assert g.read(head, "x/../a.txt", 100) == b"alpha\n"  # normalised, still inside


def test_history_lists_commits_that_changed_a_file(repo: Project) -> None:
    first = git(repo.root, "rev-parse", "HEAD")
    repo.write("sub/b.txt", "beta 2\n")
    second = commit(repo, "second")
    commit(repo, "unrelated")
    with GitRevisions(repo.root / "sub", repo.root / "sub" / "flexforge.lock") as g:
        assert g.changed_in(g.commit("HEAD"), "b.txt") == [second, first]
        assert g.changed_in(g.commit("HEAD"), "b.txt", count=1) == [second]
        assert g.read(first, "b.txt", 100) == b"beta\n"


def test_revisions_that_look_like_options_are_refused(repo: Project) -> None:
    with GitRevisions(repo.root, repo.root / "flexforge.lock") as g:
        for bad in ("--output=/tmp/x", "-p", "HEAD\nmain"):
            with pytest.raises(GitError, match="is not a revision"):
                g.commit(bad)
        with pytest.raises(GitError, match="unknown revision 'nope'"):
            g.commit("nope")


def test_default_base_is_the_merge_base_with_main(repo: Project) -> None:
    fork = git(repo.root, "rev-parse", "HEAD")
    git(repo.root, "checkout", "-q", "-b", "feature")
    repo.write("sub/c.txt", "c\n")
    commit(repo, "feature work")
    git(repo.root, "checkout", "-q", "main")
    repo.write("sub/d.txt", "d\n")
    commit(repo, "main moves on")
    git(repo.root, "checkout", "-q", "feature")
    with GitRevisions(repo.root, repo.root / "flexforge.lock") as g:
        assert g.default_base() == (fork, "merge-base of HEAD and main")


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="not inside a git repository"):
        GitRevisions(tmp_path, tmp_path / "flexforge.lock")


def test_no_default_branch_is_an_error_not_a_silent_head(repo: Project) -> None:
    git(repo.root, "branch", "-m", "main", "trunk")
    with (
        GitRevisions(repo.root, repo.root / "flexforge.lock") as g,
        pytest.raises(GitError, match=r"no default branch .* flexforge diff REV"),
    ):
        g.default_base()


def test_a_shallow_clone_without_the_base_says_how_to_fix_it(repo: Project, tmp_path: Path) -> None:
    repo.write("sub/e.txt", "e\n")
    commit(repo, "second")
    git(repo.root, "checkout", "-q", "-b", "feature")
    repo.write("sub/f.txt", "f\n")
    commit(repo, "feature")
    git(repo.root, "checkout", "-q", "main")  # the remote's default branch, as on GitHub
    clone = tmp_path / "shallow"
    git(
        tmp_path,
        "clone",
        "-q",
        "--depth",
        "1",
        "--no-local",
        "--branch",
        "feature",
        str(repo.root),
        str(clone),
    )
    git(clone, "fetch", "-q", "--depth", "1", "origin", "main:refs/remotes/origin/main")
    with (
        GitRevisions(clone, clone / "flexforge.lock") as g,
        pytest.raises(GitError, match=r"no merge-base of HEAD and .*origin/main.*fetch-depth: 0"),
    ):
        g.default_base()
