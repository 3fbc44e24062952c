"""`flexforge schema`: print (or write) the manifest's JSON Schema, for editors and other tools."""

from __future__ import annotations

from pathlib import Path

import click

from flexforge.editor_schema import render
from flexforge.errors import EXIT_OK
from flexforge.fsutil import atomic_write


def schema(draft: str, output: Path | None) -> int:
    text = render(draft)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text.encode(), durable=False)
    return EXIT_OK
