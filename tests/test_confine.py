"""Confinement: what flexforge may write, asked at validation and again before each write."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexforge.confine import Resolver, output_problem, private_part


@pytest.mark.parametrize(
    ("rel", "private"),
    [
        (".git/config", ".git"),
        (".GIT/hooks/pre-commit.png", ".git"),
        ("vendor/lib/.git/config.png", ".git"),
        (".flexforge/objects/x.png", ".flexforge"),
        ("assets/.gitkeep.png", None),
        ("assets/git/x.png", None),
    ],
)
def test_private_folders_are_found_at_any_depth_and_case(rel: str, private: str | None) -> None:
    assert private_part(rel) == private


def test_outputs_are_refused_through_links_and_outside(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "assets").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "to-git").symlink_to(root / ".git", target_is_directory=True)
    (root / "assets/a.png").symlink_to(root / "assets/b.png")
    resolver = Resolver(root)
    assert output_problem(resolver, "assets/ok.png", "png") is None
    assert "outside the project root" in str(output_problem(resolver, "linked/x.png", "png"))
    assert "inside .git/" in str(output_problem(resolver, "to-git/config.png", "png"))
    assert "symbolic link" in str(output_problem(resolver, "assets/a.png", "png"))
    assert "does not end in .webp" in str(output_problem(resolver, "assets/ok.png", "webp"))
    assert output_problem(resolver, "assets/ok.jpeg", "jpeg") is None


def test_an_avif_output_must_end_in_avif() -> None:
    from flexforge.confine import extension_problem

    assert extension_problem("assets/a.avif", "avif") is None
    assert extension_problem("assets/a.AVIF", "avif") is None
    assert extension_problem("assets/a.png", "avif") == "does not end in .avif but output_format is avif"
    assert extension_problem("assets/a.avif", "webp") == "does not end in .webp but output_format is webp"
