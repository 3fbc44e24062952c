"""`flexforge graph`: the dependency graph as Mermaid, dot or JSON."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK
from flexforge.graph import render


def graph(opts: GlobalOptions, fmt: str) -> int:
    manifest = opts.load_manifest()
    click.echo(render({a.id: a.asset_refs for a in manifest.assets.values()}, fmt))
    return EXIT_OK
