"""The GitHub workflows `flexforge init` writes: templates filled in for one project in one repository."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from flexforge.ci.collect import git, repository_root
from flexforge.errors import UsageError

TEMPLATES = Path(__file__).parent.parent / "templates" / "github"
WORKFLOWS = {"check": "check.yml", "comment": "comment.yml", "build": "build.yml"}
ACTION_ENV = "FLEXFORGE_ACTION"
_PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}\Z")
_LOCAL = re.compile(r"^\./[A-Za-z0-9_./-]*\Z")
_GITHUB_URL = re.compile(r"^(?:git\+)?https://github\.com/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git)?/?\Z")
_PLACEHOLDER = re.compile(r"__[A-Z_]+__")


def check_action(reference: str) -> str:
    """An action reference a workflow may use: pinned by commit (`owner/repo@<sha>`) or local (`./`)."""
    if _PINNED.match(reference) or _LOCAL.match(reference):
        return reference
    raise UsageError(
        f"--action {reference!r}: pin the flexforge action by commit, OWNER/REPO@<40-hex sha> "
        "(a tag can be moved to other code), or give a local path ./..."
    )


def action_reference(flag: str | None) -> str | None:
    """Which flexforge action the workflows pin: the flag, $FLEXFORGE_ACTION, the action this runs
    in, or the GitHub commit pip installed flexforge from (PEP 610). None when nothing says."""
    for given in (flag, os.environ.get(ACTION_ENV)):
        if given:
            return check_action(given)
    repo, ref = os.environ.get("GITHUB_ACTION_REPOSITORY", ""), os.environ.get("GITHUB_ACTION_REF", "")
    if repo and re.fullmatch(r"[0-9a-f]{40}", ref):
        return check_action(f"{repo}@{ref}")
    return _installed_from()


def _installed_from() -> str | None:
    try:
        text = metadata.distribution("flexforge").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        doc = json.loads(text)
        url, info = doc.get("url", ""), doc.get("vcs_info") or {}
    except (ValueError, AttributeError):
        return None
    match = _GITHUB_URL.match(url) if isinstance(url, str) else None
    commit = info.get("commit_id", "") if isinstance(info, dict) else ""
    if (
        match
        and info.get("vcs") == "git"
        and isinstance(commit, str)
        and re.fullmatch(r"[0-9a-f]{40}", commit)
    ):
        return f"{match.group(1)}@{commit}"
    return None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a project's workflows go: the repository root, and the project's folder from there."""

    root: Path
    working_directory: str
    branch: str
    in_git: bool

    @property
    def slug(self) -> str:
        if self.working_directory == ".":
            return "root"
        return re.sub(r"[^a-z0-9]+", "-", self.working_directory.lower()).strip("-") or "root"

    def path(self, kind: str) -> Path:
        suffix = "" if self.working_directory == "." else f"-{self.slug}"
        return self.root / ".github" / "workflows" / f"flexforge-{kind}{suffix}.yml"


def placement(project: Path) -> Placement:
    """GitHub reads workflows only at the repository root: find it, and the project's place in it."""
    project = project.resolve()
    root = repository_root(project)
    if root is None or not project.is_relative_to(root):
        return Placement(project, ".", "main", in_git=False)
    rel = project.relative_to(root).as_posix()
    return Placement(root, rel if rel not in ("", ".") else ".", _default_branch(root), in_git=True)


def _default_branch(root: Path) -> str:
    remote = git(root, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD", check=False)
    if remote.returncode == 0 and remote.stdout.strip():
        return remote.stdout.decode().strip().split("/", 1)[-1]
    current = git(root, "branch", "--show-current", check=False)
    name = current.stdout.decode().strip() if current.returncode == 0 else ""
    return name or "main"


def _yaml_scalar_safe(value: str, what: str) -> str:
    # Every value lands inside YAML and `paths:` globs: refuse what could change their meaning.
    if not re.fullmatch(r"[A-Za-z0-9_./@ -]+", value):
        raise UsageError(f"{what} {value!r}: use letters, digits, '_', '-', '.', '/' only for a workflow")
    return value


SHARDED_BUILD = "build-shards.yml"  # the build workflow as N runners and a fan-in (init --shards N)
MAX_SHARDS = 64


def render(kind: str, place: Placement, action: str, shards: int = 0) -> str:
    """One workflow for one project; with `shards`, the build runs on that many runners."""
    sharded = kind == "build" and shards > 1
    if shards and not 2 <= shards <= MAX_SHARDS:
        raise UsageError(f"--shards {shards}: give 2 to {MAX_SHARDS} runners (or leave it out for one)")
    text = (TEMPLATES / (SHARDED_BUILD if sharded else WORKFLOWS[kind])).read_text(encoding="utf-8")
    wd = _yaml_scalar_safe(place.working_directory, "project folder")
    values = {
        "__SHARDS__": str(shards),
        "__MATRIX__": ", ".join(str(i) for i in range(1, shards + 1)),
        "__ACTION__": check_action(action),
        "__WORKING_DIRECTORY__": wd,
        "__PATHS__": "**" if wd == "." else f"{wd}/**",
        "__SLUG__": place.slug,
        "__SUFFIX__": "" if wd == "." else f" ({wd})",
        "__BRANCH__": _yaml_scalar_safe(place.branch, "branch"),
    }
    for name, value in values.items():
        text = text.replace(name, value)
    left = _PLACEHOLDER.search(text)
    assert left is None, f"template {kind} has an unfilled {left.group(0) if left else ''}"
    return text


def write_workflows(
    project: Path, action: str, *, force: bool = False, shards: int = 0
) -> tuple[Placement, list[Path]]:
    """Write the missing workflows (all of them with force); the paths written."""
    from flexforge.fsutil import atomic_write

    place = placement(project)
    written = []
    for kind in WORKFLOWS:
        path = place.path(kind)
        if path.exists() and not force:
            continue
        atomic_write(path, render(kind, place, action, shards).encode(), durable=False)
        written.append(path)
    return place, written
