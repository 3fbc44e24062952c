"""`flexforge diff` through the CLI on a real built project in a real git repository."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Project, png
from tests.support.kit import commit, git


def _diff(kit: Project, *args: str) -> dict[str, Any]:
    result = kit.run("diff", "--json", *args)
    assert result.exit_code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    assert doc["kind"] == "diff" and doc["version"] == 1
    return doc


def _rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in doc["assets"]}


def test_working_tree_change_against_the_default_branch(kit: Project) -> None:
    git(kit.root, "checkout", "-q", "-b", "feature")
    kit.edit("seed: 1207", "seed: 1300")  # hero, and everything built on it
    assert kit.build().exit_code == 0
    doc = _diff(kit)
    assert doc["base"]["label"] == "merge-base of HEAD and main"
    assert doc["head"] == {"rev": None, "label": "working tree"}
    rows = _rows(doc)
    assert rows["hero"]["change"] == "regenerated"
    assert rows["hero"]["changed_parts"] == ["seed"]
    assert rows["hero"]["before"]["seed"] == 1207 and rows["hero"]["after"]["seed"] == 1300
    assert rows["hero"]["before"]["image"] is True and rows["hero"]["after"]["image"] is True
    assert 0 < rows["hero"]["distance"] <= 64
    for dependent in ("hero-autumn", "social-square", "story", "link-card", "banner-autumn"):
        assert rows[dependent]["change"] == "regenerated"
        assert rows[dependent]["changed_parts"] == ["upstream"]
    assert rows["shelf"]["change"] == "unchanged" and rows["shelf"]["distance"] is None
    assert doc["summary"]["regenerated"] == 6 and doc["summary"]["unchanged"] == 3


def test_two_commits_ignore_the_working_tree(kit: Project) -> None:
    base = git(kit.root, "rev-parse", "HEAD")
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    head = commit(kit, "new product shot")
    kit.edit("seed: 3001", "seed: 3010")  # uncommitted: not part of BASE..HEAD
    assert kit.build().exit_code == 0
    rows = _rows(_diff(kit, base, head))
    assert rows["product-shot"]["change"] == "regenerated"
    assert rows["shelf"]["change"] == "unchanged"
    # One revision: that commit against the working tree
    rows = _rows(_diff(kit, head))
    assert rows["shelf"]["change"] == "regenerated"
    assert rows["product-shot"]["change"] == "unchanged"


def test_rename_keeps_its_image_and_says_so(kit: Project) -> None:
    kit.edit("  product-shot:", "  packshot:")
    assert kit.build().exit_code == 0
    rows = _rows(_diff(kit, "HEAD"))
    assert rows["packshot"]["change"] == "renamed"
    assert rows["packshot"]["previous_id"] == "product-shot"
    assert rows["packshot"]["distance"] == 0
    assert "product-shot" not in rows


def test_revert_is_a_restore_that_cost_nothing(kit: Project) -> None:
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    changed = commit(kit, "try another seed")
    kit.edit("seed: 3003", "seed: 3002")
    assert kit.build().exit_code == 0  # back from the object cache, no generation
    row = _rows(_diff(kit, changed))["product-shot"]
    assert row["change"] == "restored"
    assert row["cost_usd"] == 0.0


def test_added_and_removed_assets(kit: Project) -> None:
    text = (kit.root / "flexforge.yaml").read_text()
    start = text.index("  email-header:")
    end = text.index("  banner-autumn:")
    text = text[:start] + text[end:]
    text += "\n  coaster:\n    prompt: A round cardboard coaster with the {brand} logo\n    seed: 5\n"
    (kit.root / "flexforge.yaml").write_text(text)
    assert kit.build().exit_code == 0
    doc = _diff(kit, "HEAD")
    rows = _rows(doc)
    assert rows["coaster"]["change"] == "added" and rows["coaster"]["before"] is None
    assert rows["coaster"]["after"]["prompt"] == "A round cardboard coaster with the Northwind logo"
    assert rows["email-header"]["change"] == "removed" and rows["email-header"]["after"] is None
    assert doc["summary"]["added"] == 1 and doc["summary"]["removed"] == 1


def test_accepted_hand_edit_is_an_edit(kit: Project) -> None:
    from PIL import Image

    path = kit.root / "assets" / "email-header.png"
    with Image.open(path) as img:
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, format="PNG")
    assert kit.run("accept", "email-header").exit_code == 0
    row = _rows(_diff(kit, "HEAD"))["email-header"]
    assert row["change"] == "edited"
    assert row["distance"] > 0


def test_text_output_lists_changes_with_distance(kit: Project) -> None:
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    result = kit.run("diff", "HEAD")
    assert result.exit_code == 0, result.stderr
    assert "~ product-shot  regenerated (seed)  distance" in result.stdout
    assert "Diff: 1 regenerated; 8 unchanged; cost $0.00." in result.stdout


def test_html_page_has_before_after_and_heatmap(kit: Project, tmp_path: Path) -> None:
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    out = tmp_path / "diff-site"
    result = kit.run("diff", "HEAD", "--html", str(out))
    assert result.exit_code == 0, result.stderr
    html = (out / "index.html").read_text()
    row = _rows(_diff(kit, "HEAD"))["product-shot"]
    assert f"thumbs/{row['before']['sha256']}.webp" in html
    assert f"thumbs/{row['after']['sha256']}.webp" in html
    assert len(list((out / "heatmaps").iterdir())) == 1
    assert 'id="asset-shelf"' not in html  # unchanged assets are only counted


def test_diff_outside_git_says_so(project: Project) -> None:
    project.manifest("version: 1\nassets:\n  a:\n    prompt: x\n")
    result = project.run("diff")
    assert result.exit_code == 1
    assert "is not inside a git repository" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_revision_and_too_many(kit: Project) -> None:
    result = kit.run("diff", "no-such-branch")
    assert result.exit_code == 1
    assert "unknown revision 'no-such-branch'" in result.stderr
    assert kit.run("diff", "--", "--output=/tmp/x").exit_code == 1
    assert kit.run("diff", "a", "b", "c").exit_code == 2


def test_lock_paths_leaving_the_project_are_never_read(kit: Project, tmp_path: Path) -> None:
    # An image outside the project, and a lock that names it with its true digest: if the diff
    # followed the path, the digest check would pass and the page would publish it.
    secret = png(tmp_path / "secret.png", color=(1, 2, 3))
    lock = json.loads((kit.root / "flexforge.lock").read_text())
    lock["assets"]["hero"]["out"] = "../secret.png"
    lock["assets"]["hero"]["sha256"] = hashlib.sha256(secret.read_bytes()).hexdigest()
    lock["assets"]["story"]["out"] = ".git/config"
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    out = tmp_path / "page"
    doc = _diff(kit, "HEAD", "--html", str(out))
    rows = _rows(doc)
    assert rows["hero"]["after"]["image"] is False
    assert not any(p.read_bytes() == secret.read_bytes() for p in (out / "images").iterdir())


def test_committed_bytes_that_do_not_match_the_lock_are_not_shown(kit: Project) -> None:
    before = _rows(_diff(kit, "HEAD"))  # nothing changed yet
    assert before["hero"]["change"] == "unchanged"
    # Commit a lock whose hero digest names bytes no source holds.
    lock = json.loads((kit.root / "flexforge.lock").read_text())
    lock["assets"]["hero"]["sha256"] = "f" * 64
    (kit.root / "flexforge.lock").write_text(json.dumps(lock))
    bad = commit(kit, "lock names missing bytes")
    git(kit.root, "checkout", "-q", "HEAD~1", "--", "flexforge.lock")
    row = _rows(_diff(kit, bad))["hero"]
    assert row["before"]["image"] is False and row["after"]["image"] is True
    assert row["distance"] is None


def test_bad_lock_at_a_revision_names_it(kit: Project) -> None:
    (kit.root / "flexforge.lock").write_text("{not json")
    bad = commit(kit, "broken lock")
    git(kit.root, "checkout", "-q", "HEAD~1", "--", "flexforge.lock")
    result = kit.run("diff", bad)
    assert result.exit_code == 1
    assert f"flexforge.lock at {bad} ({bad[:12]}): not a valid flexforge lock" in result.stderr
    assert "diff cannot compare that revision" in result.stderr


def test_a_repository_without_commits_says_so(project: Project) -> None:
    project.manifest("version: 1\nassets:\n  a:\n    prompt: x\n")
    git(project.root, "init", "-q", "-b", "main")
    result = project.run("diff")
    assert result.exit_code == 1
    assert "no commits yet" in result.stderr


def test_an_unreadable_manifest_at_the_base_still_diffs_the_locks(kit: Project) -> None:
    good = (kit.root / "flexforge.yaml").read_text()
    (kit.root / "flexforge.yaml").write_text("a: &a [*a, *a]\nassets: {hero: [unclosed\n")
    bad = commit(kit, "broken manifest")
    (kit.root / "flexforge.yaml").write_text(good.replace("seed: 3002", "seed: 3003"))
    assert kit.build().exit_code == 0
    rows = _rows(_diff(kit, bad))
    assert rows["product-shot"]["change"] == "regenerated"
    assert rows["product-shot"]["before"]["prompt"] is None  # the base's manifest could not be read
    assert (
        rows["product-shot"]["after"]["structured"]["scene"]
        == "A single bag of Midnight Roast on seamless paper"
    )


def test_before_image_missing_from_its_commit_comes_from_an_older_one(kit: Project) -> None:
    git(kit.root, "rm", "-q", "--cached", "site/img/product.jpg")
    without = commit(kit, "product shot left out of git (the lock still names it)")
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    shutil.rmtree(kit.root / ".flexforge" / "objects")  # no local cache to fall back on
    row = _rows(_diff(kit, without))["product-shot"]
    assert row["change"] == "regenerated"
    assert row["before"]["image"] is True  # read from the first commit, through git history
    assert row["distance"] is not None


def test_diff_without_the_review_extra_says_how_to_install_it(
    kit: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """imagehash (and its 180 MB of scipy and numpy) is the `review` extra: a CI runner that
    only builds and checks does not install it."""
    monkeypatch.setitem(sys.modules, "imagehash", None)  # what `import` finds when not installed
    kit.edit("seed: 3002", "seed: 3003")
    assert kit.build().exit_code == 0
    result = kit.run("diff", "HEAD")
    assert result.exit_code != 0
    assert "pip install 'flexforge[review]'" in result.stderr
    assert "Traceback" not in result.stderr
