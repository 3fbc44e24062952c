"""pre-commit hooks: run `validate` or `build --frozen` once for each project the staged files touch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK, FlexforgeError, ManifestError
from flexforge.paths import MANIFEST_NAME


def projects_of(files: Iterable[str], top: Path) -> list[Path]:
    """The folders whose flexforge.yaml owns each file: the nearest one above it, within `top`."""
    top = top.resolve()
    found: dict[Path, None] = {}
    for name in files:
        folder = (top / name).resolve().parent
        while folder.is_relative_to(top):
            if (folder / MANIFEST_NAME).is_file():
                found[folder] = None
                break
            if folder == top:
                break
            folder = folder.parent
    return sorted(found)


def run_hook(hook: str, files: Iterable[str], top: Path) -> int:
    from flexforge.commands.build import build
    from flexforge.commands.validate import validate
    from flexforge.options import BuildFlags, PlanOptions

    worst = EXIT_OK
    for folder in projects_of(files, top):
        opts = GlobalOptions(directory=folder, quiet=True)
        try:
            if hook == "validate":
                code = validate(opts)
            else:
                code = build(opts, PlanOptions(), None, BuildFlags(), dry_run=False, frozen=True)
        except ManifestError as exc:
            for diagnostic in exc.diagnostics:
                click.echo(f"{_shown(folder, top)}/{diagnostic}", err=True)
            code = exc.exit_code
        except FlexforgeError as exc:
            click.echo(f"{_shown(folder, top)}: {exc}", err=True)
            code = exc.exit_code
        worst = max(worst, code)
    return worst


def _shown(folder: Path, top: Path) -> str:
    return folder.relative_to(top.resolve()).as_posix() or "."
