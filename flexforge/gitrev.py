"""Naming and reading git revisions for `diff`: which commits to compare, and the project's files
as a commit has them.

Revisions are resolved here (with the default base a pull request uses); bytes are read through
the git-history object store (`flexforge.history`, one `git cat-file --batch`). Everything read is
untrusted repository content, so paths are normalised and confined to the project's folder, and
blobs are size-bounded (a huge one is streamed past, never held in memory).
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

from flexforge.errors import FlexforgeError
from flexforge.history import History

HISTORY_COMMITS = 200  # how far back `diff` looks for a key built before (a restore, not a new image)


class GitError(FlexforgeError):
    """git is missing, this is not a repository, or a revision does not exist."""


def _git(cwd: Path, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise GitError("git is not installed; `flexforge diff` reads revisions with it") from None
    if proc.returncode != 0:
        raise GitError(
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"git {args[0]} failed"
        )
    return proc.stdout


class GitRevisions:
    """The repository holding a project folder; `history` reads its objects (None: no commit yet)."""

    def __init__(self, project_root: Path, lock_path: Path) -> None:
        try:
            top = _git(project_root, "rev-parse", "--show-toplevel").strip()
        except GitError:
            raise GitError(
                f"{project_root} is not inside a git repository; `flexforge diff` compares commits"
            ) from None
        self.top = Path(top)
        self.prefix = _git(project_root, "rev-parse", "--show-prefix").strip()
        self.history = History.open(project_root, lock_path, None)

    def commit(self, rev: str) -> str:
        """The full id of the commit `rev` names; a clear error when it names none."""
        if rev.startswith("-") or "\n" in rev:
            raise GitError(f"{rev!r} is not a revision")
        try:
            return _git(
                self.top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
            ).strip()
        except GitError:
            raise GitError(
                f"unknown revision {rev!r}: name a commit, branch or tag (see `git log`)"
            ) from None

    def default_base(self) -> tuple[str, str]:
        """The merge-base of HEAD and the default branch, as a pull request sees it."""
        try:
            head = self.commit("HEAD")
        except GitError:
            raise GitError("this repository has no commits yet: commit the project, then diff") from None
        branches = self._default_branches()
        for branch in branches:
            try:
                base = _git(self.top, "merge-base", head, branch).strip()
            except GitError:
                continue
            return base, f"merge-base of HEAD and {branch}"
        # Never fall back to HEAD silently: in a shallow CI clone that would show "no changes".
        tried = f"no merge-base of HEAD and {' or '.join(branches)}" if branches else "no default branch"
        raise GitError(
            f"{tried} (origin/HEAD, main or master) to compare with (a shallow clone? fetch with "
            "`fetch-depth: 0`); name the base instead: flexforge diff REV"
        )

    def _default_branches(self) -> list[str]:
        try:
            origin = _git(self.top, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD").strip()
        except GitError:
            origin = ""
        names = [origin] if origin else []
        for name in ("main", "master", "origin/main", "origin/master"):
            try:
                _git(self.top, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
            except GitError:
                continue
            names.append(name)
        return names

    def repo_path(self, rel: str) -> str | None:
        """The repository path of a project-relative path, or None when it would leave the project
        (or cannot be named in cat-file's line protocol)."""
        if not rel or "\n" in rel or "\0" in rel or rel.startswith("/"):
            return None
        norm = posixpath.normpath(rel)
        if norm == "." or norm.startswith("../") or norm == "..":
            return None
        return self.prefix + norm

    def read(self, commit: str, rel: str, limit: int) -> bytes | None:
        """The bytes of project-relative `rel` at `commit`; None when absent, not a file, or
        larger than `limit`."""
        path = self.repo_path(rel)
        if path is None or self.history is None:
            return None
        return self.history.blob(commit, path, limit)

    def changed_in(self, commit: str, rel: str, count: int = HISTORY_COMMITS) -> list[str]:
        """Commits reachable from `commit` that changed `rel`, newest first, at most `count`."""
        path = self.repo_path(rel)
        if path is None:
            return []
        out = _git(self.top, "rev-list", f"--max-count={count}", commit, "--", f":(literal){path}")
        return out.split()

    def close(self) -> None:
        if self.history is not None:
            self.history.close()

    def __enter__(self) -> GitRevisions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
