"""`flexforge validate`: schema and semantic checks of the manifest."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK


def validate(opts: GlobalOptions) -> int:
    manifest = opts.load_manifest()
    if not opts.quiet:
        n = len(manifest.assets)
        click.echo(f"{manifest.label}: valid, {n} asset{'s' if n != 1 else ''}")
    return EXIT_OK
