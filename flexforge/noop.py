"""The no-op memo: answering "nothing to do" without loading the rest of flexforge.

When a plan finds every asset up to date, we record what that answer depended on: the bytes of
the manifest and the lock, the provider, and the (inode, size, mtime_ns) of every output and
reference file. A later `flexforge build` or `plan` whose inputs all match prints the same answer
at the cost of a few hundred stat calls, before importing click, YAML, jsonschema or networkx.
Any difference, or any option the memo does not cover, falls through to the full command.

This module must stay light: standard library only, imported before everything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.paths import lock_path_for, manifest_cache_file

MEMO_VERSION = 3
_PROVIDER_ENV = "FLEXFORGE_PROVIDER"


def _memo_path(manifest: str) -> str:
    # In the user's cache, never in the repository: a committed memo would answer "nothing to
    # do" for whatever the repository holds (docs/security.md).
    return manifest_cache_file(manifest, "noop")


def file_stamp(path: str) -> list[int] | None:
    """What tells a file changed without reading it: inode, size, mtime and ctime (which no
    program can set back, unlike an mtime restored with `touch -r`)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def racy(stamp: list[int], recorded_at: int) -> bool:
    """git's "racy" rule: a file changed in the same clock tick as the moment its stamp was
    recorded (`recorded_at`: that record's own mtime) may change again without its stamp
    changing, so the stamp cannot vouch for it."""
    return max(stamp[2], stamp[3]) >= recorded_at


def _digest(path: str) -> str | None:
    """sha256 of a plain file; None for anything else (a FIFO must not hang the fast path)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_DIGESTED:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return hashlib.sha256(f.read(_MAX_DIGESTED + 1)).hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


_MAX_DIGESTED = 64 * 2**20  # the lock's and manifest's own caps are lower


def record(
    manifest: str,
    lock: str,
    provider: str,
    asset_count: int,
    files: list[str],
    summary: str,
    *,
    by_default: bool = False,
) -> None:
    """Remember that this manifest, lock and provider planned as nothing to do."""
    from flexforge import __version__

    root = os.path.dirname(manifest)
    stamps = []
    for rel in files:
        stamp = file_stamp(os.path.join(root, rel))
        if stamp is None:
            return
        stamps.append([rel, *stamp])
    memo = {
        "v": MEMO_VERSION,
        "flexforge": __version__,
        "manifest": _digest(manifest),
        "lock": _digest(lock),
        "provider": provider,
        # Chosen by neither flag nor environment: the manifest's settings (or flexforge's default)
        # chose it, and the manifest's digest below stands for them.
        "by_default": by_default,
        "assets": asset_count,
        "summary": summary,
        "files": stamps,
    }
    from pathlib import Path

    from flexforge.fsutil import atomic_write

    data = json.dumps(memo, separators=(",", ":"), allow_nan=False).encode()
    target = Path(_memo_path(manifest))
    with contextlib.suppress(OSError):  # only a cache
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, data, durable=False)


def _parse(argv: list[str]) -> tuple[str, str, str | None, bool, bool] | None:
    """(command, directory, manifest file, quiet, detailed_exitcode), or None for anything the
    memo cannot answer exactly as the full command would."""
    command = None
    directory, file = ".", "flexforge.yaml"
    provider: str | None = os.environ.get(_PROVIDER_ENV) or None
    quiet = detailed = False
    args = iter(argv)
    for arg in args:
        if arg in ("build", "plan") and command is None:
            command = arg
        elif arg == "-C":
            directory = next(args, "")
        elif arg in ("-f", "--file"):
            file = next(args, "")
        elif arg == "--provider":
            provider = next(args, "") or None
        elif arg in ("-q", "--quiet"):
            quiet = True
        elif arg == "--no-color":
            pass
        elif arg == "--detailed-exitcode" and command == "plan":
            detailed = True
        else:
            return None
    if command is None or not directory or not file:
        return None
    return command, os.path.join(directory, file), provider, quiet, detailed


def answer(argv: list[str]) -> int | None:
    """The exit code of a no-op `build`/`plan` if the memo still holds, else None."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    command, manifest, provider, quiet, _ = parsed
    manifest = os.path.abspath(manifest)
    try:
        with open(_memo_path(manifest), "rb") as f:
            written = os.fstat(f.fileno()).st_mtime_ns
            memo = json.loads(f.read())
        return _check(memo, written, command, manifest, provider, quiet)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, FlexforgeError):
        return None  # no memo, one damaged, or a bad knob: the full command answers (and says so)


def _check(
    memo: dict[str, Any], written: int, command: str, manifest: str, provider: str | None, quiet: bool
) -> int | None:
    from flexforge import __version__

    if (
        memo.get("v") != MEMO_VERSION
        or memo.get("flexforge") != __version__
        or (memo.get("provider") != provider if provider else memo.get("by_default") is not True)
    ):
        return None
    if memo.get("manifest") != _digest(manifest):
        return None
    if memo.get("lock") != _digest(str(lock_path_for(manifest))):
        return None
    root = os.path.dirname(manifest)
    for rel, *stamp in memo["files"]:
        now = file_stamp(os.path.join(root, rel))
        if now is None or now != stamp or racy(now, written):
            return None
    summary, assets = memo["summary"], memo["assets"]
    if not quiet:
        if command == "build":
            n = int(assets)
            sys.stdout.write(f"Up to date: {n} asset{'' if n == 1 else 's'}.\n")
        else:
            sys.stdout.write(str(summary) + "\n")
    return 0
