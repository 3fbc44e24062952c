"""`flexforge graph`: the dependency graph as Mermaid, dot or JSON."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK
from flexforge.graph import render


def graph(opts: GlobalOptions, fmt: str) -> int:
    manifest = opts.load_manifest()
    groups = {a.id: a.origin.split(" ")[0] for a in manifest.assets.values() if a.origin}
    click.echo(render({a.id: a.asset_refs for a in manifest.assets.values()}, fmt, groups))
    return EXIT_OK
