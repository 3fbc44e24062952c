"""A budget the project owns: committed in the manifest, enforced on estimates before any
submission; a flag lowers it, never raises it; per asset too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flexforge.emulator.testing import RunningEmulator
from tests.helpers import Project
from tests.support.emulator import serve_builds

MANIFEST = """
version: 1
settings:
  provider: emulator
  max_cost_usd: {budget}
  max_cost_policy: refuse
defaults: {{width: 256, height: 256}}
assets:
  a: {{prompt: "one", seed: 1}}
  b: {{prompt: "two", seed: 2}}
  c: {{from: a, size: 100x100}}
"""


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def _estimate(project: Project) -> float:
    total: float = project.run("plan", "--json").json()["estimated_cost_usd"]
    return total


def test_a_committed_budget_refuses_a_plan_over_it(project: Project, emu: RunningEmulator) -> None:
    project.manifest(MANIFEST.format(budget=0.001))
    result = project.run("build")
    assert result.exit_code == 1 and "nothing was started" in result.stderr
    assert emu.stats()["submissions"] == 0 and not (project.root / "assets").exists()


def test_the_budget_covers_the_plan_and_renditions_are_free(project: Project, emu: RunningEmulator) -> None:
    project.manifest(MANIFEST.format(budget=1.0))
    total = _estimate(project)
    project.manifest(MANIFEST.format(budget=round(total, 6)))  # exactly the two generations
    result = project.run("build")
    assert result.exit_code == 0, result.stderr
    assert emu.stats()["submissions"] == 2 and (project.root / "assets/c.png").exists()


def test_a_flag_can_lower_the_budget_but_not_raise_it(project: Project, emu: RunningEmulator) -> None:
    project.manifest(MANIFEST.format(budget=1.0))
    result = project.run("build", "--max-cost", "5")
    assert result.exit_code == 2 and "over the project's budget $1.00" in result.stderr
    assert "a flag can only lower it" in result.stderr
    result = project.run("build", "--max-cost", "0.001")
    assert result.exit_code == 1 and "over the limit $0.00" in result.stderr
    assert emu.stats()["submissions"] == 0


def test_the_environment_cannot_raise_it_either(
    project: Project, emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.manifest(MANIFEST.format(budget=0.5))
    monkeypatch.setenv("FLEXFORGE_MAX_COST", "9")
    result = project.run("build")
    assert result.exit_code == 2 and "FLEXFORGE_MAX_COST=9 is over the project's budget" in result.stderr


def test_a_per_asset_budget_refuses_before_anything_is_submitted(
    project: Project, emu: RunningEmulator
) -> None:
    project.manifest(
        """
        version: 1
        settings: {provider: emulator}
        assets:
          small: {prompt: "one", seed: 1, width: 256, height: 256}
          big: {prompt: "two", seed: 2, width: 2048, height: 2048, max_cost_usd: 0.01}
        """
    )
    result = project.run("build")
    assert result.exit_code == 1
    assert "over its own budget (max_cost_usd in the manifest): big ($" in result.stderr
    assert emu.stats()["submissions"] == 0
    project.edit("max_cost_usd: 0.01", "max_cost_usd: 1")
    assert project.run("build").exit_code == 0
    assert emu.stats()["submissions"] == 2
