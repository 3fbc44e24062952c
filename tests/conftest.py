"""Shared fixtures: every test runs in its own temp dirs, never in $HOME, never with real keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Project

SECRET_ENV = (
    "BFL_API_KEY",
    "BFL_API_KEY_FILE",
    "BFL_API_BASE",
    "COMETAPI_KEY",
    "COMETAPI_KEY_FILE",
    "COMETAPI_BASE",
    "FLEXFORGE_PROVIDER",
    "FLEXFORGE_EMULATOR_URL",
    "FLEXFORGE_EMULATOR_KEY",
    "FLEXFORGE_CACHE_DIR",  # flexforge's caches and machine key follow $HOME like everything else
    "FLEXFORGE_DATA_DIR",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("NO_COLOR", "1")
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "repo")


@pytest.fixture
def kit(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The launch-kit example, built with the draft provider and committed on branch main."""
    from tests.support.kit import make_kit

    template = tmp_path_factory.getbasetemp() / "launch-kit-template"
    return make_kit(tmp_path / "kit", template)
