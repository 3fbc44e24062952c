"""`flexforge init [DIR]`: a starter manifest, the state folder's .gitignore, the GitHub workflows."""

from __future__ import annotations

from pathlib import Path

import click

from flexforge.context import GlobalOptions
from flexforge.editor_schema import render as render_schema
from flexforge.errors import EXIT_OK, FlexforgeError
from flexforge.fsutil import atomic_write
from flexforge.paths import MANIFEST_NAME, STATE_DIR
from flexforge.store import Store

TEMPLATES = Path(__file__).parent.parent / "templates"
EDITOR_SCHEMA = "flexforge.schema.json"


def init(
    directory: Path,
    opts: GlobalOptions,
    *,
    workflows_only: bool = False,
    action: str | None = None,
    force: bool = False,
    shards: int = 0,
) -> int:
    from flexforge.ci.workflows import action_reference, write_workflows

    reference = action_reference(action)  # a bad --action fails before anything is written
    written: list[str] = []
    if not workflows_only:
        manifest = directory / (opts.file or MANIFEST_NAME)
        if manifest.exists():
            raise FlexforgeError(
                f"{manifest} already exists; edit it, or remove it to start over "
                "(`flexforge init --workflows-only` adds the GitHub workflows and .flexforge/.gitignore)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(manifest, (TEMPLATES / "flexforge.yaml").read_bytes(), durable=False)
        written.append(manifest.name)
        schema = directory / EDITOR_SCHEMA
        if not schema.exists():
            atomic_write(schema, render_schema("07").encode(), durable=False)
            written.append(EDITOR_SCHEMA)
    elif not directory.is_dir():
        raise FlexforgeError(f"{directory}: no such folder")
    Store(directory / STATE_DIR).ensure()
    written.append(f"{STATE_DIR}/.gitignore")
    if reference is None:
        note = (
            "GitHub workflows not written: say which flexforge action to pin, e.g. "
            "`flexforge init --workflows-only --action OWNER/flexforge@<commit sha>` "
            "(or set FLEXFORGE_ACTION)"
        )
    else:
        place, paths = write_workflows(directory, reference, force=force, shards=shards)
        written += [
            str(p.relative_to(directory.resolve())) if p.is_relative_to(directory.resolve()) else str(p)
            for p in paths
        ]
        note = "" if place.in_git else "not in a git repository: workflows written here, at the future root"
        if not paths:
            note = "GitHub workflows already there (--force rewrites them)"
    if not opts.quiet:
        click.echo(f"wrote {', '.join(written)} in {directory}")
        if note:
            click.echo(note)
        if not workflows_only:
            click.echo(
                "next: `flexforge plan`, then `flexforge build --provider draft` for an offline preview"
            )
    return EXIT_OK
