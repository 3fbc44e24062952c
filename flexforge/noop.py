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
import sys

MEMO_VERSION = 1
_STATE_DIR = ".flexforge"
_PROVIDER_ENV = "FLEXFORGE_PROVIDER"


def _memo_path(manifest: str) -> str:
    folder, name = os.path.split(manifest)
    return os.path.join(folder, _STATE_DIR, "cache", f"{name}.noop.json")


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def record(manifest: str, lock: str, provider: str, asset_count: int, files: list[str], summary: str) -> None:
    """Remember that this manifest, lock and provider planned as nothing to do."""
    from flexforge import __version__

    root = os.path.dirname(manifest)
    stamps = []
    for rel in files:
        stamp = _stamp(os.path.join(root, rel))
        if stamp is None:
            return
        stamps.append([rel, *stamp])
    memo = {
        "v": MEMO_VERSION,
        "flexforge": __version__,
        "manifest": _digest(manifest),
        "lock": _digest(lock),
        "provider": provider,
        "assets": asset_count,
        "summary": summary,
        "files": stamps,
    }
    from pathlib import Path

    from flexforge.fsutil import atomic_write

    data = json.dumps(memo, separators=(",", ":"), allow_nan=False).encode()
    with contextlib.suppress(OSError):  # only a cache
        atomic_write(Path(_memo_path(manifest)), data, durable=False)


def _parse(argv: list[str]) -> tuple[str, str, str, bool, bool] | None:
    """(command, directory, manifest file, quiet, detailed_exitcode), or None for anything the
    memo cannot answer exactly as the full command would."""
    command = None
    directory, file, provider = ".", "flexforge.yaml", os.environ.get(_PROVIDER_ENV) or "bfl"
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
            provider = next(args, "")
        elif arg in ("-q", "--quiet"):
            quiet = True
        elif arg == "--no-color":
            pass
        elif arg == "--detailed-exitcode" and command == "plan":
            detailed = True
        else:
            return None
    if command is None or not directory or not file or not provider:
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
        with open(_memo_path(manifest), encoding="utf-8") as f:
            memo = json.load(f)
    except (OSError, ValueError):
        return None
    from flexforge import __version__

    if (
        memo.get("v") != MEMO_VERSION
        or memo.get("flexforge") != __version__
        or memo.get("provider") != provider
    ):
        return None
    if memo.get("manifest") != _digest(manifest):
        return None
    lock = os.path.splitext(manifest)[0] + ".lock"
    if memo.get("lock") != _digest(lock):
        return None
    root = os.path.dirname(manifest)
    for rel, *stamp in memo["files"]:
        if _stamp(os.path.join(root, rel)) != stamp:
            return None
    if not quiet:
        if command == "build":
            sys.stdout.write(f"Up to date: {memo['assets']} assets.\n")
        else:
            sys.stdout.write(memo["summary"] + "\n")
    return 0
