"""`flexforge gallery`: a static site of every asset with its picture, status, prompt and lineage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from flexforge import __version__
from flexforge.commands.plan import compute_plan
from flexforge.confine import Resolver
from flexforge.context import GlobalOptions, Project, open_project
from flexforge.errors import EXIT_OK
from flexforge.imagesource import ImageSources, confined
from flexforge.options import PlanOptions
from flexforge.planner import Plan
from flexforge.render import Site, SiteImage
from flexforge.report import Gallery, gallery_assets
from flexforge.thumbs import Thumbs

DEFAULT_OUT = "gallery"  # in the project's user cache folder, like every derived file


def gallery(opts: GlobalOptions, provider: str | None, out: Path | None) -> int:
    project = open_project(opts)
    plan = compute_plan(project, PlanOptions(), provider)
    shown, sources = shown_images(project, plan)
    cards = gallery_assets(plan, project.lock, shown)
    model = Gallery(
        assets=cards,
        provider=plan.provider,
        total_cost_usd=round(sum(c.cost_usd or 0.0 for c in cards), 6),
        estimated_cost_usd=plan.estimated_cost_usd,
    )
    store = project.store
    site = Site(out or store.cache_dir / DEFAULT_OUT, Thumbs(store.cache_dir / "thumbs"))
    images: dict[str, SiteImage] = {}
    for sha in dict.fromkeys(c.image for c in cards if c.image):
        picture = site.image(sha, sources.loader(sha))
        if picture is not None:
            images[sha] = picture
    counts = sorted(Counter(c.status for c in cards).items())
    index = site.page(
        "gallery.html.j2",
        gallery=model,
        images=images,
        facets=model.facets(),
        counts=counts,
        title=project.manifest.root.name,
        flexforge_version=__version__,
    )
    site.finish()
    if not opts.quiet:
        weight = site.weight()
        click.echo(
            f"Gallery of {len(cards)} assets: {index.resolve().as_uri()}\n"
            f"  thumbnails: {site.thumbs.made} made, {site.thumbs.reused} reused; page "
            f"{weight['page_bytes'] / 1024:.0f} KB, thumbnails {weight['thumb_bytes'] / 1024:.0f} KB, "
            f"full images {weight['image_bytes'] / 2**20:.1f} MB"
        )
    for sha in site.missing:
        click.echo(f"warning: no readable image with sha256 {sha[:12]}… (shown as missing)", err=True)
    return EXIT_OK


def shown_images(project: Project, plan: Plan) -> tuple[dict[str, str | None], ImageSources]:
    """The picture for each asset: the file on disk, else the lock's output from the object
    cache (a deleted file still shows what the lock recorded)."""
    store = project.store
    resolver = Resolver(project.manifest.root)
    sources = ImageSources(store)
    outs = {s.asset.id: s.asset.out for s in plan.steps}
    outs.update((o, project.lock.entries[o].out) for o in plan.orphaned)
    cached_only = {s.asset.id for s in plan.steps if not s.asset.written}  # never read at `out`
    shown: dict[str, str | None] = {}
    for asset_id, out in outs.items():
        path = confined(resolver, out) if asset_id not in cached_only else None
        digest = store.digest(out) if path is not None and path.is_file() else None
        if digest is not None and path is not None:
            sources.add_file(digest, path)
            shown[asset_id] = digest
            continue
        entry = project.lock.entries.get(asset_id)
        shown[asset_id] = entry.sha256 if entry is not None and sources.has(entry.sha256) else None
    store.save()
    return shown, sources
