"""Where image bytes come from: every candidate checked against the digest, and confined."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexforge.confine import Resolver
from flexforge.imagesource import ImageSources, MissingImage, confined, read_bounded
from tests.test_thumbs import picture, sha


def test_sources_return_only_bytes_with_the_asked_digest(tmp_path: Path) -> None:
    good, bad = picture(), picture(shift=5)
    (tmp_path / "wrong.png").write_bytes(bad)
    (tmp_path / "right.png").write_bytes(good)
    sources = ImageSources()
    sources.add_file(sha(good), tmp_path / "wrong.png")  # a lock naming the wrong file
    with pytest.raises(MissingImage):
        sources.load(sha(good))
    sources.add_file(sha(good), tmp_path / "right.png")
    assert sources.load(sha(good)) == good


def test_fallbacks_run_only_when_nothing_else_has_the_bytes(tmp_path: Path) -> None:
    data = picture()
    (tmp_path / "a.png").write_bytes(data)
    calls: list[str] = []

    def fallback() -> bytes:
        calls.append("fallback")
        return data

    sources = ImageSources()
    sources.add_fallback(sha(data), fallback)
    sources.add_file(sha(data), tmp_path / "a.png")
    assert sources.load(sha(data)) == data and calls == []
    (tmp_path / "a.png").unlink()
    assert sources.load(sha(data)) == data and calls == ["fallback"]


def test_confined_paths_stay_inside_and_out_of_private_folders(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "a.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"secret")
    (root / "assets" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "inner.png").symlink_to(root / "assets" / "a.png")
    resolver = Resolver(root)
    assert confined(resolver, "assets/a.png") == resolver.root / "assets" / "a.png"
    assert confined(resolver, "inner.png") == resolver.root / "assets" / "a.png"
    for bad in (
        "../outside.png",
        "assets/link.png",
        ".git/config",
        ".flexforge/objects/x",
        "assets/../../outside.png",
    ):
        assert confined(resolver, bad) is None, bad


def test_reads_are_bounded_and_never_follow_a_final_link(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    assert read_bounded(tmp_path / "big", limit=99) is None
    assert read_bounded(tmp_path / "big", limit=100) == b"x" * 100
    (tmp_path / "link").symlink_to(tmp_path / "big")
    assert read_bounded(tmp_path / "link") is None
    assert read_bounded(tmp_path) is None  # a folder
    with pytest.raises(MissingImage):
        ImageSources().load("0" * 64)
