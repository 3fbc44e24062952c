"""The site writer: folders it may write, files it prunes, and the shared templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexforge.errors import FlexforgeError
from flexforge.render import MARKER, Site, environment
from flexforge.thumbs import Thumbs
from tests.test_thumbs import picture, sha


def test_refuses_a_folder_with_files_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FlexforgeError, match="not empty and was not written by flexforge"):
        Site(out, Thumbs(tmp_path / "t"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlexforgeError, match="is not a folder"):
        Site(tmp_path / "file", Thumbs(tmp_path / "t"))
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(FlexforgeError, match="is not a folder"):
        Site(tmp_path / "link", Thumbs(tmp_path / "t"))


def test_a_rerun_prunes_images_no_page_names(tmp_path: Path) -> None:
    out, thumbs = tmp_path / "out", Thumbs(tmp_path / "t")
    a, b = picture(), picture(shift=40)
    site = Site(out, thumbs)
    assert site.image(sha(a), lambda: a) and site.image(sha(b), lambda: b)
    site.finish()
    assert len(list((out / "images").iterdir())) == 2 and (out / MARKER).is_file()
    (out / "index.html").write_text("old page")  # not in an owned folder: kept
    again = Site(out, thumbs)
    assert again.image(sha(b), lambda: b)
    again.finish()
    assert [p.name for p in (out / "images").iterdir()] == [f"{sha(b)}.png"]
    assert [p.stem for p in (out / "thumbs").iterdir()] == [sha(b)]
    assert (out / "_static" / "site.js").is_file()


def test_missing_image_is_reported_not_drawn_broken(tmp_path: Path) -> None:
    site = Site(tmp_path / "out", Thumbs(tmp_path / "t"))
    assert site.image("0" * 64, lambda: b"garbage") is None
    assert site.missing == ["0" * 64]


def test_templates_escape_what_the_repository_wrote() -> None:
    env = environment()
    html = env.get_template("_macros.html.j2").module.prompt("<script>alert(1)</script>", None)
    assert "<script>" not in str(html) and "&lt;script&gt;" in str(html)
    structured = env.get_template("_macros.html.j2").module.prompt(
        "", {"scene": "<b>x</b>", "color_palette": ["#fff"]}
    )
    assert "<b>" not in str(structured) and "--c: #fff" in str(structured)
    sneaky = env.get_template("_macros.html.j2").module.prompt("", {"color_palette": ["#f;x:1"]})
    assert "--c" not in str(sneaky) and "#f;x:1" in str(sneaky)


def test_variants_mark_the_selected_candidate() -> None:
    from flexforge.render import SiteImage
    from flexforge.report import Gallery, GalleryAsset, Variant

    card = GalleryAsset(
        id="hero",
        status="none",
        reasons=[],
        out="assets/hero.png",
        image="a" * 64,
        lock_sha256="a" * 64,
        prompt="p",
        structured=None,
        params={},
        seed=1,
        model="flux-2-flex",
        generator="draft",
        provider="draft",
        cost_usd=0.0,
        estimated_cost_usd=0.0,
        references=[],
        dependents=[],
        tags=["launch"],
        variants=[Variant("a" * 64, 1, False), Variant("b" * 64, 2, True)],
    )
    images = {s: SiteImage(f"images/{s}.png", f"thumbs/{s}.webp", 32, 32) for s in ("a" * 64, "b" * 64)}
    gallery = Gallery([card], "draft", 0.0, 0.0)
    html = (
        environment()
        .get_template("gallery.html.j2")
        .render(
            gallery=gallery,
            images=images,
            facets=gallery.facets(),
            counts=[("none", 1)],
            title="t",
            flexforge_version="0",
        )
    )
    items = html.split('<section class="variants">')[1].split("</section>")[0].split("<li")[1:]
    assert 'class=""' in items[0] and "selected" not in items[0].split(">", 1)[1]
    assert 'class="selected"' in items[1] and "2 · selected · seed 2" in items[1]
    assert '<option value="launch">launch</option>' in html  # tags feed the tag filter
