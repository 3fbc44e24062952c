"""The comment renderer: what it shows, what it escapes, and that it always fits GitHub's limit."""

from __future__ import annotations

import re

from flexforge.ci.comment import (
    COMMENT_LIMIT,
    MARKER,
    marker,
    raw_url,
    render_comment,
    render_summary,
    text,
)
from flexforge.ci.review import AssetChange, Review

BASE = "a" * 40
HEAD = "b" * 40


def review(changes: list[AssetChange], **kw: object) -> Review:
    fields: dict[str, object] = {
        "repository": "acme/site",
        "base_sha": BASE,
        "head_sha": HEAD,
        "project": ".",
        "provider": "bfl",
        "changes": tuple(changes),
        "total_assets": 10,
        "estimated_cost_usd": sum(c.estimated_cost_usd for c in changes),
        "run_url": "https://github.com/acme/site/actions/runs/7",
        "pull_request": 3,
    }
    fields.update(kw)
    return Review(**fields)  # type: ignore[arg-type]


def test_comment_starts_with_the_hidden_marker_and_shows_reasons_and_cost() -> None:
    body = render_comment(
        review(
            [
                AssetChange(
                    "hero",
                    "regenerate",
                    ("prompt",),
                    "assets/hero.png",
                    "flux-2-flex",
                    0.0664,
                    before="assets/hero.png",
                ),
                AssetChange("square", "create", (), "assets/square.png", "flux-2-pro", 0.03),
            ]
        )
    )
    assert body.split("\n", 1)[0] == MARKER
    assert "regenerate (prompt)" in body
    assert "2 to build, estimated $0.10" in body
    assert "~$0.07" in body
    assert "paid images are never built from a pull request" in body


def test_before_and_after_link_the_committed_images_at_base_and_head() -> None:
    change = AssetChange(
        "hero", "regenerated", (), "site/a b.png", before="site/old.png", after="site/a b.png"
    )
    body = render_comment(review([change]))
    assert f'src="https://github.com/acme/site/raw/{BASE}/site/old.png"' in body
    assert f'src="https://github.com/acme/site/raw/{HEAD}/site/a%20b.png"' in body


def test_raw_urls_are_on_the_configured_server() -> None:
    r = review([], server_url="https://ghe.example.internal")
    assert raw_url(r, HEAD, "x/#1?.png") == f"https://ghe.example.internal/acme/site/raw/{HEAD}/x/%231%3F.png"


def test_repository_text_cannot_break_the_table_open_tags_or_mention_people() -> None:
    hostile = "x|y</td><script>alert(1)</script> @octocat `code` [a](b) ![i](j) <!-- -->"
    body = render_comment(review([AssetChange("hero", "create", (), hostile)] * 30))
    for bad in ("<script", "@octocat", "</td>", "`code`", "](b)", "<!-- -->"):
        assert bad not in body
    # Every table row keeps its five cells: the pipe in the path is an entity.
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    assert rows and all(line.count(" | ") == 4 for line in rows)


def test_text_encodes_everything_but_plain_path_characters() -> None:
    assert text("assets/hero-1.png") == "assets/hero-1.png"
    assert text("a_b") == "a&#95;b"
    assert text("é\n") == "&#233;&#10;"


def test_five_thousand_assets_with_long_paths_fit_under_githubs_limit() -> None:
    long = "deeply/nested/" * 20
    changes = [
        AssetChange(
            f"asset-{i:05d}",
            "regenerate",
            ("prompt", "params"),
            f"{long}{i}.png",
            "flux-2-flex",
            0.0451,
            before=f"{long}{i}.png",
        )
        for i in range(5000)
    ]
    body = render_comment(review(changes, total_assets=6000))
    assert len(body) < COMMENT_LIMIT
    assert "<details><summary>4980 more changes</summary>" in body
    assert re.search(r"\n(\d+) more not shown here: see the job summary", body)
    assert body.count("<details>") == body.count("</details>") == 1
    assert "5000 to build" in body


def test_no_changes_says_so_and_has_no_table() -> None:
    body = render_comment(review([]))
    assert "no image changes" in body
    assert "<details>" not in body and "| asset |" not in body


def test_validation_errors_are_listed_in_a_fence_that_cannot_be_closed_from_inside() -> None:
    errors = ("flexforge.yaml:3:5: assets.hero.steps: 80 is greater than the maximum of 50", "x ``` y")
    body = render_comment(review([], errors=errors))
    assert "the manifest has 2 errors" in body
    assert body.count("```") == 2


def test_each_project_has_its_own_marker() -> None:
    assert marker(".") == MARKER
    assert marker("web/img") == "<!-- flexforge project=web/img -->"
    assert marker("web-img") != marker("web/img")
    assert "--" not in marker("a-->b").removeprefix("<!--").removesuffix("-->")


def test_summary_holds_every_change() -> None:
    changes = [
        AssetChange(f"a{i}", "create", (), f"assets/a{i}.png", estimated_cost_usd=0.03) for i in range(300)
    ]
    summary = render_summary(review(changes))
    assert all(f"`a{i}`" in summary for i in range(300))


def test_a_committed_image_shows_what_it_cost() -> None:
    change = AssetChange(
        "hero", "regenerated", ("prompt",), "a.png", before="a.png", after="a.png", paid_usd=0.045
    )
    assert "| $0.04 paid |" in render_comment(review([change]))
