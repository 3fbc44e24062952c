"""The no-op memo: answering "nothing to do" without loading the rest of flexforge.

When a plan finds every asset up to date, we record what that answer depended on: the manifest,
the lock, the provider, and the stamp (inode, size, mtime, ctime) of every output and reference
file, with the manifest's and the lock's stamps as they were *before* the plan read them. A later
`flexforge build` or `plan` whose inputs all match prints the same answer at the cost of one
stat call per file, before importing click, YAML, jsonschema, json or hashlib. Any difference, or
any option the memo does not cover, falls through to the full command.

The memo lives in the user's cache, never in the repository (docs/security.md). Its format is
made to load with no parser: a short text header, the paths joined by NUL, and the stamps as one
run of 64-bit integers (four a file), checked for length before use (no pickle or marshal: a damaged or
planted file is only ever a memo that does not match).

This module must stay light: standard library built-ins only, imported before everything else.
"""

from __future__ import annotations

import os
import stat
import struct
import sys

from flexforge.paths import lock_path_for, project_cache_dir

TYPE_CHECKING = False  # typing itself costs the no-op path an import (mypy reads this as True)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MEMO_VERSION = 6
_MAGIC = b"flexforge-noop %d\n" % MEMO_VERSION
_PROVIDER_ENV = "FLEXFORGE_PROVIDER"
_MEMO_LIMIT = 256 * 2**20  # a 1,000,000-file project's memo is ~60 MB
# A file's stamp in the memo: inode, size, mtime_ns, ctime_ns as native int64s (the memo never
# leaves this machine), so that the stamps taken now compare with the recorded ones as bytes.
_PACK = struct.Struct("=4q").pack
_INT64 = range(-(2**63), 2**63)


def _memo_path(manifest: str) -> str:
    # In the user's cache, never in the repository: a committed memo would answer "nothing to
    # do" for whatever the repository holds (docs/security.md).
    folder, name = os.path.split(manifest)
    return os.path.join(project_cache_dir(folder), f"{name}.noop")


def stamp_of(st: os.stat_result) -> list[int]:
    """What tells a file changed without reading it: inode, size, mtime and ctime (which no
    program can set back, unlike an mtime restored with `touch -r`)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_stamp(path: str) -> list[int] | None:
    """stamp_of the file at `path` (through links), or None when there is nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stamp_of(st)


def regular_stamp(path: str) -> list[int] | None:
    """file_stamp of a plain file (through links); None for anything else or nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return stamp_of(st)


def racy(stamp: list[int], recorded_at: int) -> bool:
    """git's "racy" rule: a file changed in the same clock tick as the moment its stamp was
    recorded (`recorded_at`: that record's own mtime) may change again without its stamp
    changing, so the stamp cannot vouch for it."""
    return max(stamp[2], stamp[3]) >= recorded_at


def record(
    manifest: str,
    provider: str,
    asset_count: int,
    files: Sequence[str],
    plan_lines: Sequence[str],
    *,
    by_default: bool = False,
    read_stamps: Mapping[str, list[int] | None],
    quiet_lines: int = 0,
    observed: Mapping[str, list[int]] | None = None,
) -> None:
    """Remember that this manifest, lock and provider planned as nothing to do.

    `plan_lines` is what `plan` printed, of which the first `quiet_lines` also under -q (a
    matrix's expansion). `read_stamps` holds the manifest's and the lock's stamps (by path) taken
    before the plan read them: if either changed since, the plan answered for other bytes and
    nothing is recorded. `observed` holds the stamp each file had when the plan read its
    digest (by root-relative path); a file the plan did not read is stamped now."""
    from flexforge import __version__

    root = os.path.dirname(manifest)
    lock = lock_path_for(manifest)
    numbers: list[bytes] = []
    names: list[bytes] = []
    for path in (manifest, lock):
        before = read_stamps.get(path)
        if before is None or regular_stamp(path) != before:
            return
        numbers.append(_PACK(*before))
        names.append(os.fsencode(os.path.relpath(path, root)))
    seen = observed or {}
    for rel in files:
        stamp = seen.get(rel) or file_stamp(os.path.join(root, rel))
        name = os.fsencode(rel)
        if stamp is None or b"\0" in name or not all(n in _INT64 for n in stamp):
            return  # an inode past 2**63 (some network file systems): this project goes without
        numbers.append(_PACK(*stamp))
        names.append(name)
    header = [__version__, provider, "1" if by_default else "0", str(asset_count)]
    header += [str(len(plan_lines)), str(quiet_lines), *plan_lines]
    if any("\n" in line for line in header) or not 0 <= quiet_lines <= len(plan_lines):
        return
    paths = b"\0".join(names)
    head = "".join(f"{line}\n" for line in header).encode() + b"%d %d\n" % (len(names), len(paths))
    data = _MAGIC + head + paths + b"".join(numbers)

    from pathlib import Path

    from flexforge.fsutil import atomic_write

    target = Path(_memo_path(manifest))
    try:  # only a cache
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, data, durable=False)
    except OSError:
        pass


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
        fd = os.open(_memo_path(manifest), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except Exception:  # no memo, or a bad FLEXFORGE_CACHE_DIR (a UsageError): the full command says so
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MEMO_LIMIT:
            return None
        data = b""
        while len(data) < st.st_size:
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        lines = _check(data, st.st_mtime_ns, command, manifest, provider, quiet)
    except (OSError, ValueError, TypeError, IndexError, UnicodeDecodeError, struct.error):
        return None  # a damaged memo, or a file gone: the full command answers
    if lines is None:
        return None
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    except BrokenPipeError:
        raise
    except OSError:  # a full disk behind stdout: the full command says so in its own words
        return None
    return 0


def _stamps(root: str, names: list[bytes]) -> bytes:
    """The packed stamps of the files `names` (relative to `root`), one stat each. From within
    `root`: the kernel then walks two path components a file rather than the whole path."""
    back = os.open(".", os.O_RDONLY)
    try:
        os.chdir(root)
        pack = _PACK
        return b"".join(
            [pack(s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in map(os.stat, names)]
        )
    finally:
        os.fchdir(back)  # by descriptor: right even if the old folder was renamed meanwhile
        os.close(back)


def _check(
    data: bytes, written: int, command: str, manifest: str, provider: str | None, quiet: bool
) -> list[str] | None:
    """The lines to print if `data`, a memo written at `written`, still holds; else None."""
    from flexforge import __version__

    if not data.startswith(_MAGIC):
        return None
    head = data[len(_MAGIC) :].split(b"\n", 6)
    if len(head) != 7:
        return None
    version, memo_provider, by_default, assets, shown, always = (line.decode() for line in head[:6])
    if version != __version__ or (memo_provider != provider if provider else by_default != "1"):
        return None
    if int(shown) < 0:
        return None
    rest = head[6].split(b"\n", int(shown) + 1)
    if len(rest) != int(shown) + 2:
        return None
    plan_lines = [line.decode() for line in rest[: int(shown)]]
    count, size = (int(n) for n in rest[-2].split(b" "))
    body = rest[-1]
    # A view, not an array: the array module imports collections.abc, which costs more than this.
    raw = body[size:]
    stamps = memoryview(raw).cast("q")
    names = body[:size].split(b"\0")
    if len(names) != count or len(stamps) != 4 * count or count < 2:
        return None
    # Written in the clock tick of a change, a stamp cannot vouch for that file (git's "racy").
    if max(stamps[2::4]) >= written or max(stamps[3::4]) >= written:
        return None
    # Compared as bytes: no tuple of four ints made a file for the recorded side.
    if _stamps(os.path.dirname(manifest), names) != raw:
        return None
    if command == "build":
        n = int(assets)
        return [] if quiet else [f"Up to date: {n} asset{'' if n == 1 else 's'}."]
    return plan_lines[: int(always)] if quiet else plan_lines
