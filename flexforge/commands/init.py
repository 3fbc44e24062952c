"""`flexforge init [DIR]`: a starter manifest, the state folder's .gitignore, a CI workflow."""

from __future__ import annotations

from pathlib import Path

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK, FlexforgeError
from flexforge.fsutil import atomic_write
from flexforge.paths import MANIFEST_NAME, STATE_DIR
from flexforge.store import Store

TEMPLATES = Path(__file__).parent.parent / "templates"
WORKFLOW = Path(".github") / "workflows" / "flexforge.yml"


def init(directory: Path, opts: GlobalOptions) -> int:
    manifest = directory / (opts.file or MANIFEST_NAME)
    if manifest.exists():
        raise FlexforgeError(f"{manifest} already exists; edit it, or remove it to start over")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, (TEMPLATES / "flexforge.yaml").read_bytes(), durable=False)
    Store(directory / STATE_DIR).ensure()
    written = [manifest.name, f"{STATE_DIR}/.gitignore"]
    workflow = directory / WORKFLOW
    if not workflow.exists():
        atomic_write(workflow, (TEMPLATES / "workflow.yml").read_bytes(), durable=False)
        written.append(str(WORKFLOW))
    if not opts.quiet:
        click.echo(f"wrote {', '.join(written)} in {directory}")
        click.echo("next: `flexforge plan`, then `flexforge build --provider draft` for an offline preview")
    return EXIT_OK
