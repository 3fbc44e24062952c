"""The gallery and diff pages in a real headless Chromium, opened from file:// as a user would.

Each test starts from a real built project, opens the page, checks that every image loads
(naturalWidth > 0), that the filters and the lightbox work and that nothing is logged as an
error, and saves a screenshot under test-artifacts/browser/ (or $FLEXFORGE_TEST_ARTIFACTS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Project
from tests.support.browser import PageLog, artifacts_dir, chromium, load_every_image
from tests.support.kit import flexforge


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, PageLog]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log = PageLog()
    log.attach(page)
    yield page, log
    context.close()


def _shown(page: Any) -> list[str]:
    ids: list[str] = page.evaluate(
        "Array.from(document.querySelectorAll('#cards > .card:not([hidden])')).map((c) => c.id.slice(6))"
    )
    return ids


def test_gallery_in_chromium(kit: Project, tmp_path: Path, page: tuple[Any, PageLog]) -> None:
    tab, log = page
    kit.edit("seed: 3002", "seed: 3003")  # product-shot now plans a regenerate: a second status
    out = tmp_path / "gallery"
    result = flexforge(kit.root, "gallery", "--provider", "draft", "--out", str(out))
    assert result.returncode == 0, result.stderr
    tab.goto((out / "index.html").as_uri())
    tab.screenshot(path=artifacts_dir() / "gallery.png")

    images = load_every_image(tab)
    assert len(images) >= 9
    assert [i["src"] for i in images if i["width"] <= 0] == []

    all_ids = _shown(tab)
    assert len(all_ids) == 9 and tab.inner_text("#f-count") == "9 of 9 shown"
    tab.select_option("#f-status", "regenerate")
    assert _shown(tab) == ["product-shot"]
    tab.select_option("#f-status", "")
    tab.select_option("#f-model", "flux-2-klein-4b")
    assert _shown(tab) == ["email-header"]
    tab.select_option("#f-model", "")
    tab.fill("#f-text", "packshot")
    assert _shown(tab) == ["product-shot"]
    tab.fill("#f-text", "no such words anywhere")
    assert _shown(tab) == [] and tab.is_visible("#f-none")
    tab.fill("#f-text", "")
    assert len(_shown(tab)) == 9

    tab.click("#asset-hero figure a.zoom")
    assert tab.is_visible("#lightbox")
    tab.wait_for_function("document.querySelector('#lightbox img').complete")
    natural = tab.evaluate("document.querySelector('#lightbox img').naturalWidth")
    assert natural == 1536  # the full-size image, not the thumbnail
    assert tab.inner_text("#lightbox figcaption") == "hero"
    tab.screenshot(path=artifacts_dir() / "gallery-lightbox.png")
    tab.keyboard.press("ArrowRight")
    assert tab.inner_text("#lightbox figcaption") == "hero-autumn"
    tab.keyboard.press("Escape")
    assert not tab.is_visible("#lightbox")
    assert log.errors == []


def test_diff_in_chromium(kit: Project, tmp_path: Path, page: tuple[Any, PageLog]) -> None:
    tab, log = page
    kit.edit("seed: 1207", "seed: 1300")
    kit.edit("  product-shot:", "  packshot:")
    assert flexforge(kit.root, "build", "--provider", "draft", "-q").returncode == 0
    out = tmp_path / "diff"
    result = flexforge(kit.root, "diff", "HEAD", "--html", str(out))
    assert result.returncode == 0, result.stderr
    tab.goto((out / "index.html").as_uri())
    tab.screenshot(path=artifacts_dir() / "diff.png")

    images = load_every_image(tab)
    assert [i["src"] for i in images if i["width"] <= 0] == []
    heatmaps = [i for i in images if i["src"].startswith("heatmaps/")]
    assert len(heatmaps) == 6  # hero and its five dependents; the rename has the same bytes
    assert len(_shown(tab)) == 7

    tab.select_option("#f-status", "renamed")
    assert _shown(tab) == ["packshot"]
    tab.select_option("#f-status", "regenerated")
    assert len(_shown(tab)) == 6
    tab.fill("#f-text", "1300")  # the new seed, in the details
    assert _shown(tab) == ["hero"]

    tab.click("#asset-hero .pair figure:nth-child(3) a.zoom")
    assert tab.is_visible("#lightbox")
    assert tab.inner_text("#lightbox figcaption") == "hero difference"
    tab.keyboard.press("ArrowLeft")
    assert tab.inner_text("#lightbox figcaption") == "hero after"
    tab.keyboard.press("Escape")
    assert log.errors == []


def _ids(page: Any) -> list[str]:
    """The ids of the cards shown, copies included, in page order."""
    ids: list[str] = page.evaluate(
        "Array.from(document.querySelectorAll('#cards > .card:not([hidden])')).map((c) => c.dataset.id)"
    )
    return ids


def _heads(page: Any) -> list[str]:
    heads: list[str] = page.evaluate(
        "Array.from(document.querySelectorAll('#cards > .group-head:not([hidden])'))"
        ".map((h) => h.textContent)"
    )
    return heads


def test_gallery_filters_and_groups_by_matrix_axis_and_tag(tmp_path: Path, page: tuple[Any, PageLog]) -> None:
    from tests.test_gallery import MATRIX

    tab, log = page
    project = Project(tmp_path / "campaign")
    project.manifest(MATRIX)
    assert flexforge(project.root, "build", "--provider", "draft", "-q").returncode == 0
    out = tmp_path / "gallery"
    result = flexforge(project.root, "gallery", "--provider", "draft", "--out", str(out))
    assert result.returncode == 0, result.stderr
    tab.goto((out / "index.html").as_uri())
    images = load_every_image(tab)
    assert [i["src"] for i in images if i["width"] <= 0] == []  # AVIF renditions too
    everything = _ids(tab)
    assert len(everything) == 11 and tab.inner_text("#f-count") == "11 of 11 shown"

    tab.select_option("#f-axis-1", "harvest")  # product
    harvest = ["hero-harvest", "hero-harvest--1", "hero-harvest--2"]  # its candidates are in its cell
    assert sorted(_ids(tab)) == [*harvest, "post-harvest-email-header", "post-harvest-open-graph"]
    tab.select_option("#f-axis-0", "open-graph")  # and channel
    assert _ids(tab) == ["post-harvest-open-graph"]
    tab.select_option("#f-axis-0", "")
    tab.select_option("#f-axis-1", "")
    tab.select_option("#f-matrix", "hero-{product}")
    assert len(_ids(tab)) == 6 and {i.split("--")[0] for i in _ids(tab)} == {"hero-harvest", "hero-midnight"}
    tab.select_option("#f-matrix", "")

    tab.select_option("#f-group", "axis-0")  # group by channel
    assert _heads(tab) == ["channel: email-header", "channel: open-graph", "no channel"]
    tab.screenshot(path=artifacts_dir() / "gallery-grouped.png")
    order = _ids(tab)
    assert sorted(order[:2]) == ["post-harvest-email-header", "post-midnight-email-header"]
    assert sorted(order[2:4]) == ["post-harvest-open-graph", "post-midnight-open-graph"]
    assert sorted(order) == sorted(everything)
    tab.select_option("#f-axis-1", "midnight")  # a filter hides empty groups' headings too
    assert _heads(tab) == ["channel: email-header", "channel: open-graph", "no channel"]
    assert _ids(tab)[:2] == ["post-midnight-email-header", "post-midnight-open-graph"]
    assert sorted(_ids(tab)[2:]) == ["hero-midnight", "hero-midnight--1", "hero-midnight--2"]
    tab.select_option("#f-axis-1", "")

    # By tag, a card with two tags is under both; the count still counts assets once.
    tab.select_option("#f-group", "tags")
    assert _heads(tab) == [
        "tag: brand",
        "tag: email-header",
        "tag: hero",
        "tag: open-graph",
        "tag: social",
        "no tag",
    ]
    assert _ids(tab).count("post-harvest-open-graph") == 2
    assert tab.inner_text("#f-count") == "11 of 11 shown"
    tab.select_option("#f-tag", "brand")
    assert _heads(tab) == ["tag: brand"] and _ids(tab) == ["logo"]
    tab.select_option("#f-tag", "")
    tab.select_option("#f-axis-0", "open-graph")
    assert len(_ids(tab)) == 4 and tab.inner_text("#f-count") == "2 of 11 shown"  # each under 2 tags
    assert _heads(tab) == ["tag: open-graph", "tag: social"]
    tab.select_option("#f-axis-0", "")

    # Back to no grouping: the cards in their first order, the copies gone.
    tab.select_option("#f-group", "")
    assert _heads(tab) == [] and _ids(tab) == everything
    assert tab.evaluate("document.querySelectorAll('#cards > .card.copy').length") == 0
    assert log.errors == []
