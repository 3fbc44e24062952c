"""`flexforge graph`: the dependency graph as Mermaid, dot or JSON."""

from __future__ import annotations

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK
from flexforge.graph import render
from flexforge.manifest import load_manifest


def graph(opts: GlobalOptions, fmt: str) -> int:
    manifest = load_manifest(opts.manifest_path())
    click.echo(render({a.id: a.asset_refs for a in manifest.assets.values()}, fmt))
    return EXIT_OK
