"""Keeping every path flexforge reads or writes for a project inside its root, and out of `.git/`
and the state folder.

Validation asks these questions once; the build asks them again right before each read and
write, because a repository's folders can be swapped for links after (or without) validation.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from flexforge.paths import STATE_DIR

PRIVATE = (".git", STATE_DIR)


class Resolver:
    """Path.resolve() with each folder resolved once: a thousand files in one folder otherwise
    cost a thousand walks over every component of their path."""

    def __init__(self, root: Path) -> None:
        self._folders: dict[Path, Path] = {}
        self._real_folders: dict[str, str] = {}
        self.root = self.resolve(root)
        self._root = str(self.root)

    def resolve(self, path: Path) -> Path:
        if path.name in ("", ".", ".."):
            return path.resolve()
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders[path.parent] = path.parent.resolve()
        target = folder / path.name
        return target.resolve() if target.is_symlink() else target

    def real(self, rel: str) -> str | None:
        """The absolute path root-relative `rel` really leads to, if inside the root, else None.
        resolve() in strings: a thousand Path objects cost more than the checks they carry."""
        return self.locate(rel)[0]

    def locate(self, rel: str) -> tuple[str | None, bool]:
        """`real(rel)`, and whether `rel`'s own last name is a symbolic link (learnt on the
        way: asking again would cost another lstat per file)."""
        path = os.path.join(self._root, rel)
        folder, name = os.path.split(path)
        link = False
        if name in ("", ".", ".."):
            target = _real_folder(path)
            if not target:
                return None, link
        else:
            real = self._real_folders.get(folder)
            if real is None:
                real = self._real_folders[folder] = _real_folder(folder)
            if not real:
                return None, link
            target = os.path.join(real, name)
            if os.path.islink(target):
                link = True
                target = _real_folder(target)
                if not target:
                    return None, link
        root = self._root
        if target != root and not target.startswith(root.rstrip("/") + "/"):
            return None, link
        return target, link

    def inside(self, rel: str) -> str | None:
        """Where root-relative `rel` really leads, root-relative; None if it leaves the root."""
        target = self.real(rel)
        return None if target is None else self.relative(target)

    def relative(self, target: str) -> str:
        """A path real() gave, root-relative."""
        return "." if target == self._root else target[len(self._root.rstrip("/")) + 1 :]


def _real_folder(folder: str) -> str:
    """The folder's real path; "" when a link loop stands on the way. realpath() alone stops at
    the loop and goes on from there ('loop/../a' to 'a'), a path the system itself refuses to
    walk (ELOOP): the file at the end is not what the manifest names. A folder not made yet
    (an output's) is resolved as far as it exists."""
    try:
        return os.path.realpath(folder, strict=True)
    except OSError as exc:
        return "" if exc.errno == errno.ELOOP else os.path.realpath(folder)


def private_part(rel: str) -> str | None:
    """The `.git` or state folder a root-relative path lies in, if any. Any `.git` counts (a
    submodule's too), in any case: on macOS and Windows `.GIT/config` is `.git/config`."""
    parts = [p.lower() for p in rel.split("/")]
    if parts[:1] == [STATE_DIR]:
        return STATE_DIR
    return ".git" if ".git" in parts else None


def extension_problem(out: str, output_format: str) -> str | None:
    """Why `out`'s name does not fit its format (said after the path), or None."""
    suffix = out.rpartition("/")[2].rpartition(".")[2].lower() if "." in out.rpartition("/")[2] else ""
    allowed = {"jpeg": ("jpg", "jpeg")}.get(output_format, (output_format,))
    if suffix not in allowed:
        return f"does not end in .{allowed[0]} but output_format is {output_format}"
    return None


def output_problem(resolver: Resolver, out: str, output_format: str) -> str | None:
    """Why flexforge may not write the output `out` now, or None. Checked at validation and
    again right before every write or restore."""
    wrong_type = extension_problem(out, output_format)
    if wrong_type is not None:
        return f"{out} {wrong_type}"
    target, link = resolver.locate(out)
    if target is None:
        return f"{out} leads outside the project root (a symbolic link?)"
    private = private_part(out) or private_part(resolver.relative(target))
    if private is not None:
        return f"{out} is inside {private}/, which flexforge never writes"
    if link:
        return f"{out} is a symbolic link; flexforge writes outputs only as plain files"
    return None
