"""Confinement: what flexforge may write, asked at validation and again before each write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_an_output_whose_last_name_is_a_link_is_refused_even_through_a_folder_link(tmp_path: Path) -> None:
    """The one lstat `locate` makes of the last name serves the link check: an output reached
    through a folder link inside the root is allowed, its last name being a link is not, and a
    link that dangles or loops is refused too."""
    root = tmp_path / "repo"
    (root / "assets").mkdir(parents=True)
    (root / "assets/real.png").write_bytes(b"x")
    (root / "pics").symlink_to(root / "assets", target_is_directory=True)
    (root / "assets/link.png").symlink_to(root / "assets/real.png")
    (root / "assets/dangling.png").symlink_to(root / "assets/gone.png")
    (root / "assets/loop.png").symlink_to(root / "assets/loop.png")
    resolver = Resolver(root)
    assert output_problem(resolver, "pics/real.png", "png") is None
    assert resolver.locate("pics/real.png") == (str(resolver.root / "assets/real.png"), False)
    assert resolver.locate("pics/link.png") == (str(resolver.root / "assets/real.png"), True)
    for out in ("pics/link.png", "assets/link.png", "assets/dangling.png", "assets/loop.png"):
        assert output_problem(resolver, out, "png") is not None, out


def test_an_avif_output_must_end_in_avif() -> None:
    from flexforge.confine import extension_problem

    assert extension_problem("assets/a.avif", "avif") is None
    assert extension_problem("assets/a.AVIF", "avif") is None
    assert extension_problem("assets/a.png", "avif") == "does not end in .avif but output_format is avif"
    assert extension_problem("assets/a.avif", "webp") == "does not end in .webp but output_format is webp"


def _pathlib_inside(root: Path, rel: str) -> str | None:
    """What Resolver.inside answered before it worked in strings: the reference it must match."""
    real_root = root.resolve()
    target = (root / rel).resolve()
    return target.relative_to(real_root).as_posix() if target.is_relative_to(real_root) else None


PARTS = ["refs", "a.png", "..", ".", "", "in-link", "out-link", "dir-link", "dangling", "loop", "new"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=5), trailing=st.booleans())
def test_the_string_resolver_leads_where_pathlib_leads(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str], trailing: bool
) -> None:
    base = tmp_path_factory.mktemp("tree")
    root = base / "repo"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "a.png").write_bytes(b"x")
    (base / "outside").mkdir()
    (root / "in-link").symlink_to(root / "refs" / "a.png")
    (root / "refs" / "out-link").symlink_to(base / "outside")
    (root / "dir-link").symlink_to("refs")
    (root / "refs" / "dangling").symlink_to("nowhere")
    (root / "loop").symlink_to("loop")
    rel = "/".join(parts) + ("/" if trailing else "")
    resolver = Resolver(root)
    try:
        os.stat(root / rel)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the system refuses the path: so does the resolver
            assert resolver.inside(rel) is None
            return
    try:
        expected = _pathlib_inside(root, rel)
    except RuntimeError:
        # A link loop: pathlib raised (a traceback in validation); now it leads where the loop
        # stands, which is no file: "neither an asset id nor a file under the root".
        assert resolver.inside(rel) is None or not (root / rel).is_file()
        return
    assert resolver.inside(rel) == expected
    assert resolver.inside(rel) == expected  # and again, from the folder cache


def test_a_path_through_a_link_loop_leads_nowhere(tmp_path: Path) -> None:
    """'loop/../in-link' cannot be opened (ELOOP); realpath alone went past the loop and named
    the file behind in-link, so validation accepted a reference no read could follow."""
    root = tmp_path / "repo"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "a.png").write_bytes(b"x")
    (root / "in-link").symlink_to(root / "refs" / "a.png")
    (root / "loop").symlink_to("loop")
    resolver = Resolver(root)
    assert resolver.inside("loop/../in-link") is None
    assert resolver.inside("in-link") == "refs/a.png"
    assert resolver.inside("new/out.png") == "new/out.png"  # a folder not made yet still resolves
