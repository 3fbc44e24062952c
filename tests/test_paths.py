"""Where flexforge keeps things: the user's cache, keyed by the project's real path."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from flexforge import paths


def test_the_cache_folder_is_platformdirs_choice() -> None:
    """paths spells platformdirs' rule out (importing it costs the no-op path); they must agree."""
    assert paths.user_cache_root() == platformdirs.user_cache_dir("flexforge", appauthor=False)


@pytest.mark.parametrize("value", ["relative/dir", ""])
def test_a_relative_xdg_cache_home_is_ignored_like_platformdirs_does(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert paths.user_cache_root() == platformdirs.user_cache_dir("flexforge", appauthor=False)


def test_the_cache_folder_can_be_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEXFORGE_CACHE_DIR", str(tmp_path / "ci-cache"))
    assert paths.project_cache_dir(tmp_path).startswith(str(tmp_path / "ci-cache"))


def test_a_project_is_one_project_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "repo"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert paths.project_cache_dir(tmp_path / "link") == paths.project_cache_dir(real)
    other = tmp_path / "clone"
    other.mkdir()
    assert paths.project_cache_dir(other) != paths.project_cache_dir(real)


def test_each_manifest_has_its_own_caches(tmp_path: Path) -> None:
    one = paths.manifest_cache_file(tmp_path / "flexforge.yaml", "noop")
    two = paths.manifest_cache_file(tmp_path / "other.yaml", "noop")
    assert one != two and Path(one).parent == Path(two).parent
    assert paths.lock_path_for(str(tmp_path / "other.yaml")) == str(tmp_path / "other.lock")
