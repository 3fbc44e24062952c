"""`flexforge validate`: schema and semantic checks of the manifest."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK
from flexforge.manifest import load_manifest


def validate(opts: GlobalOptions) -> int:
    manifest = load_manifest(opts.manifest_path())
    if not opts.quiet:
        n = len(manifest.assets)
        click.echo(f"{manifest.label()}: valid, {n} asset{'s' if n != 1 else ''}")
    return EXIT_OK
