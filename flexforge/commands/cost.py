"""`flexforge cost`: what this machine's builds paid, by run, asset, model or month, from the
ledger (rerolls, replaced and discarded images included: everything the API billed)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable

import click

from flexforge.context import GlobalOptions
from flexforge.errors import EXIT_OK
from flexforge.paths import STATE_DIR
from flexforge.store import LedgerEntry, Store
from flexforge.text import plural

GROUPS: dict[str, Callable[[LedgerEntry], str]] = {
    "run": lambda e: e.run or time.strftime("%Y%m%dT%H%M%SZ (before runs were named)", time.gmtime(e.time)),
    "asset": lambda e: e.asset,
    "model": lambda e: e.model or "(not recorded)",
    "month": lambda e: time.strftime("%Y-%m", time.gmtime(e.time)),
}


def spend(entries: list[LedgerEntry], by: str) -> list[tuple[str, int, float]]:
    """(group, paid images, USD) per group, in the group's natural order."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for entry in entries:
        row = totals[GROUPS[by](entry)]
        row[0] += 1
        row[1] += entry.cost_usd
    return [(name, int(n), round(usd, 6)) for name, (n, usd) in sorted(totals.items())]


def cost(opts: GlobalOptions, by: str, *, as_json: bool) -> int:
    # The ledger is the state folder's, beside the manifest: what was spent stays readable
    # while the manifest is broken (mid-merge, mid-edit), which is when it is asked most.
    entries = Store(opts.manifest_path().parent / STATE_DIR).ledger()
    total = round(sum(e.cost_usd for e in entries), 6)
    if as_json:
        doc = {
            "version": 1,
            "total_usd": total,
            "images": len(entries),
            **{
                f"by_{g}": [{g: k, "images": n, "usd": usd} for k, n, usd in spend(entries, g)]
                for g in GROUPS
            },
        }
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
        return EXIT_OK
    rows = spend(entries, by)
    width = max([len(by), *(len(k) for k, _, _ in rows)])
    click.echo(f"  {by.upper():<{width}}  {'IMAGES':>6}  {'USD':>9}")
    for key, n, usd in rows:
        click.echo(f"  {key:<{width}}  {n:>6}  {usd:>9.4f}")
    click.echo(f"{plural(len(entries), 'paid image')}, ${total:.2f} in total (this machine's ledger).")
    return EXIT_OK
