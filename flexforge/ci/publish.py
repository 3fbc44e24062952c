"""Commit what a CI build made (the lock and the outputs it names) and push it, or open a pull request.

Only files flexforge owns are staged, never `git add -A`. The token reaches git through
`GIT_CONFIG_*` variables, never argv (other processes can read a command line) and never a file.
"""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flexforge.confine import Resolver, private_part
from flexforge.errors import FlexforgeError, UsageError
from flexforge.lockfile import Lock

if TYPE_CHECKING:
    from flexforge.ci.rest import GitHub

MODES = ("none", "push", "pull-request")
BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"


@dataclass(slots=True)
class Published:
    commit: str = ""
    pushed_to: str = ""
    pull_request_url: str = ""


def _env(token: str, server_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_AUTHOR_NAME", BOT_NAME)
    env.setdefault("GIT_AUTHOR_EMAIL", BOT_EMAIL)
    env.setdefault("GIT_COMMITTER_NAME", BOT_NAME)
    env.setdefault("GIT_COMMITTER_EMAIL", BOT_EMAIL)
    env["GIT_TERMINAL_PROMPT"] = "0"
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        env["GIT_CONFIG_COUNT"] = str(count + 1)
        env[f"GIT_CONFIG_KEY_{count}"] = f"http.{server_url.rstrip('/')}/.extraheader"
        env[f"GIT_CONFIG_VALUE_{count}"] = f"AUTHORIZATION: basic {basic}"
    return env


def _git(root: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        # git's own words, without anything that could hold the token.
        detail = done.stderr.strip().splitlines()[-1:] or [""]
        raise FlexforgeError(f"git {args[0]} failed: {detail[0][:300]}")
    return done


def owned_paths(lock: Lock, project: Path, root: Path) -> list[str]:
    """The lock and every output it names, from the repository root, that exist on disk as plain
    files inside the project and outside `.git/` and `.flexforge/` (the lock is repository text)."""
    resolver = Resolver(project)
    top = root.resolve()
    rels = []
    for out in [lock.path.name, *(entry.out for entry in lock.entries.values())]:
        inside = resolver.inside(out)
        path = project / out
        if inside is None or private_part(inside) or path.is_symlink() or not path.is_file():
            continue
        rels.append((resolver.root / inside).relative_to(top).as_posix())
    return sorted(set(rels))


def publish(
    mode: str,
    *,
    root: Path,
    project: Path,
    lock: Lock,
    token: str,
    server_url: str,
    github: GitHub | None,
    run_id: str = "",
    message: str = "flexforge: build images",
) -> Published:
    """Commit the images and lock; push to the current branch, or to a new one with a pull request."""
    if mode not in MODES:
        raise UsageError(f"publish {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "none":
        return Published()
    env = _env(token, server_url)
    paths = owned_paths(lock, project, root)
    if not paths:
        return Published()
    _git(root, env, "add", "--", *paths)
    if _git(root, env, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return Published()  # nothing new: a no-op build commits nothing
    _git(root, env, "commit", "-q", "-m", message, "--", *paths)
    commit = _git(root, env, "rev-parse", "HEAD").stdout.strip()
    branch = _git(root, env, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch == "HEAD":
        branch = os.environ.get("GITHUB_REF_NAME", "")
    pushed = (
        mode == "push"
        and branch
        and _git(root, env, "push", "-q", "origin", f"HEAD:refs/heads/{branch}", check=False)
    )
    if pushed and pushed.returncode == 0:
        return Published(commit=commit, pushed_to=branch)
    # A protected branch, or it moved while we built: hand the images over as a pull request.
    if github is None:
        raise FlexforgeError("cannot open a pull request without a GitHub repository and token")
    new_branch = f"flexforge/images-{run_id or commit[:12]}"
    _git(root, env, "push", "-q", "origin", f"HEAD:refs/heads/{new_branch}")
    url = github.open_pull_request(
        new_branch,
        branch or "main",
        message,
        "Images and lock made by `flexforge build` in CI. Review the pictures, then merge.",
    )
    return Published(commit=commit, pushed_to=new_branch, pull_request_url=url)
