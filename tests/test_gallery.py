"""`flexforge gallery` through the CLI on real built projects (the browser checks are in
tests/test_pages_browser.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import Project, png


def _tag(html: str, asset_id: str) -> str:
    """The opening <article> tag of an asset's card."""
    match = re.search(rf'<article [^>]*id="asset-{re.escape(asset_id)}"[^>]*>', html)
    assert match, asset_id
    return match.group(0)


def _made(stdout: str) -> tuple[int, int]:
    match = re.search(r"thumbnails: (\d+) made, (\d+) reused", stdout)
    assert match, stdout
    return int(match.group(1)), int(match.group(2))


def test_gallery_shows_every_asset_with_its_image(kit: Project, tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    lock = kit.lock()["assets"]
    for asset_id, entry in lock.items():
        assert f'id="asset-{asset_id}"' in html
        sha = entry["sha256"]
        assert f"thumbs/{sha}.webp" in html
        full = next((out / "images").glob(f"{sha}.*"))
        assert full.read_bytes() == kit.read(entry["out"])
    assert (out / "_static" / "site.js").is_file()
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN
    assert html.count('loading="lazy"') >= len(lock)
    assert _made(result.stdout) == (len(lock), 0)


def test_rerun_after_one_change_makes_one_thumbnail(kit: Project, tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert kit.run("gallery", "--provider", "draft", "--out", str(out)).exit_code == 0
    kit.edit("seed: 3002", "seed: 3003")  # product-shot: no dependents
    assert kit.build().exit_code == 0
    again = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert again.exit_code == 0, again.stderr
    assert _made(again.stdout) == (1, 8)
    new_sha = kit.lock()["assets"]["product-shot"]["sha256"]
    thumbs = sorted(p.stem for p in (out / "thumbs").iterdir())
    assert new_sha in thumbs and len(thumbs) == 9  # the old thumbnail was pruned


def test_gallery_shows_plan_status_and_reasons(kit: Project, tmp_path: Path) -> None:
    kit.edit("Brew bold", "Brew bolder")  # a var: every asset using {tagline} changes
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    hero = html.split('id="asset-hero"')[1].split("</article>")[0]
    assert 'data-status="regenerate"' in _tag(html, "hero")
    assert "prompt" in hero
    # lineage is linked both ways
    assert 'href="#asset-hero-autumn"' in hero
    autumn = html.split('id="asset-hero-autumn"')[1].split("</article>")[0]
    assert 'href="#asset-hero"' in autumn


def test_gallery_refuses_a_folder_it_did_not_write(kit: Project, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 1
    assert "not empty and was not written by flexforge" in result.stderr
    assert (out / "notes.txt").read_text() == "precious"


def test_gallery_default_folder_is_in_the_user_cache(kit: Project) -> None:
    result = kit.run("gallery", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    url = result.stdout.split("Gallery of 9 assets: ", 1)[1].split()[0]
    index = Path(url.removeprefix("file://"))
    assert index.is_file() and index.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))
    assert not (kit.root / ".flexforge" / "gallery").exists()


def test_an_orphan_lock_entry_pointing_outside_is_not_published(kit: Project, tmp_path: Path) -> None:
    # Manifest outputs are confined by validation; an orphaned lock entry is only in the lock,
    # which the repository controls: it names a file outside with that file's true digest.
    secret = png(tmp_path / "secret.png", color=(9, 9, 9))
    lock = kit.lock()
    stanza = dict(
        lock["assets"]["hero"], out="../secret.png", sha256=hashlib.sha256(secret.read_bytes()).hexdigest()
    )
    lock["assets"]["gone"] = stanza
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    (kit.root / "link.png").symlink_to(secret)
    lock["assets"]["gone-too"] = dict(stanza, out="link.png")
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text()
    assert 'id="asset-gone"' in html and 'data-status="orphaned"' in html
    assert secret.read_bytes() not in [p.read_bytes() for p in (out / "images").iterdir()]


def test_a_deleted_output_is_shown_from_the_cache_as_the_lock_recorded_it(
    kit: Project, tmp_path: Path
) -> None:
    recorded = kit.read("assets/hero.png")
    (kit.root / "assets" / "hero.png").unlink()
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text()
    assert 'data-status="restore"' in _tag(html, "hero")
    assert recorded in [p.read_bytes() for p in (out / "images").iterdir()]


def test_a_project_never_built_shows_every_asset_waiting(project: Project, tmp_path: Path) -> None:
    project.manifest(
        """
        version: 1
        assets:
          poster: {prompt: "A poster", seed: 1, width: 256, height: 256}
          square: {prompt: "The poster from image 1, square", references: [poster], width: 256, height: 256}
        """
    )
    out = tmp_path / "site"
    result = project.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text()
    cards = html.split('<main id="cards"')[1].split("</main>")[0]
    assert html.count("not built yet") == 2 and "<img" not in cards
    assert 'data-status="create"' in _tag(html, "poster")


def test_markup_in_lock_ids_and_paths_is_shown_as_text(kit: Project, tmp_path: Path) -> None:
    lock = kit.lock()
    lock["assets"]["orphan"] = dict(lock["assets"]["hero"], out="<img src=x onerror=alert(2)>.png")
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text()
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;.png" in html
    # Markup in an id never gets this far: the lock reader refuses ids that are not asset ids.
    evil = '"><script>alert(1)</script><x y="'
    lock["assets"][evil] = lock["assets"].pop("orphan")
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 1 and "is not an asset id" in result.stderr


MATRIX = """
version: 1
defaults: {width: 128, height: 128}
axes:
  product: [midnight, harvest]
assets:
  hero-{product}:
    matrix: {product: product}
    variants: 2
    tags: [hero]
    prompt: "a bag of {product} coffee"
  post-{product}-{channel}:
    matrix: {product: product, channel: [open-graph, email-header]}
    from: "hero-{product}"
    size: "{channel}"
    output_format: avif
    tags: [social, "{channel}"]
  logo: {prompt: "a logo", tags: [brand]}
"""


def test_gallery_cards_carry_their_matrix_cell_and_tags(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.manifest(MATRIX)
    assert project.build().exit_code == 0
    out = tmp_path / "site"
    result = project.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    card = _tag(html, "post-harvest-email-header")
    assert 'data-matrix="post-{product}-{channel}"' in card
    assert 'data-axis-0="email-header"' in card and 'data-axis-1="harvest"' in card  # channel, product
    assert 'data-tags="social email-header"' in card
    assert "data-matrix" not in _tag(html, "logo")
    assert '<select id="f-axis-1" data-filter="axis-1" data-axis="product">' in html
    assert '<option value="axis-0" data-label="channel">' in html
    # Candidates are drawn from the cache (nothing is written for them), AVIF renditions as AVIF.
    assert not (tmp_path / "p" / "variants").exists()
    lock = project.lock()["assets"]
    for k in (1, 2):
        assert f"thumbs/{lock[f'hero-midnight--{k}']['sha256']}.webp" in html
    avif = lock["post-harvest-email-header"]["sha256"]
    assert (out / "images" / f"{avif}.avif").is_file()


def test_gallery_works_without_the_review_extra(
    kit: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from flexforge.thumbs import has_imagehash

    monkeypatch.setitem(sys.modules, "imagehash", None)  # what `import` finds when not installed
    has_imagehash.cache_clear()  # asked once per process: ask again without the package
    request.addfinalizer(has_imagehash.cache_clear)
    out = tmp_path / "site"
    result = kit.run("gallery", "--provider", "draft", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert _made(result.stdout) == (len(kit.lock()["assets"]), 0)
