"""Project settings in the manifest's `settings:` block; environment and flags override them."""

from __future__ import annotations

import pytest

from flexforge.errors import UsageError
from flexforge.settings import Settings, effective
from tests.helpers import Project

DRAFT_PROJECT = """
version: 1
settings:
  provider: draft
  jobs: 2
defaults: {width: 128, height: 128}
assets:
  a: {prompt: "A poster with the headline 'One'"}
  b: {prompt: "A poster with the headline 'Two'"}
"""


def test_flag_beats_environment_beats_settings_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    committed = Settings(provider="draft", jobs=3, max_cost_usd=1.5, max_cost_policy="refuse")
    assert effective(Settings()).provider == "bfl" and effective(Settings()).jobs == 8
    chosen = effective(committed)
    assert (chosen.provider, chosen.jobs, chosen.max_cost_usd, chosen.max_cost_policy) == (
        "draft",
        3,
        1.5,
        "refuse",
    )
    monkeypatch.setenv("FLEXFORGE_PROVIDER", "cometapi")
    monkeypatch.setenv("FLEXFORGE_JOBS", "5")
    monkeypatch.setenv("FLEXFORGE_MAX_COST", "0.5")
    chosen = effective(committed)
    assert (chosen.provider, chosen.jobs, chosen.max_cost_usd) == ("cometapi", 5, 0.5)
    chosen = effective(committed, provider="emulator", jobs=1, max_cost_usd=0.0)
    assert (chosen.provider, chosen.jobs, chosen.max_cost_usd, chosen.provider_by_default) == (
        "emulator",
        1,
        0.0,
        False,
    )


@pytest.mark.parametrize("bad", ["many", "0", "-3", "nan"])
def test_bad_environment_numbers_are_usage_errors(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("FLEXFORGE_JOBS", bad)
    with pytest.raises(UsageError, match="FLEXFORGE_JOBS"):
        effective(Settings())


def test_committed_provider_is_remembered_by_plan_status_and_build(project: Project) -> None:
    project.manifest(DRAFT_PROJECT)
    built = project.run("build")  # no --provider: the settings say draft, which needs no key
    assert built.exit_code == 0, built.stderr
    plan = project.run("plan", "--json")
    assert {a["action"] for a in plan.json()["assets"]} == {"none"}
    assert project.run("status").exit_code == 0
    project.edit("'One'", "'Uno'")
    assert project.run("plan", "--json").json()["assets"][0]["reasons"] == ["prompt"]


def test_changing_the_committed_provider_reads_generator(project: Project) -> None:
    project.manifest(DRAFT_PROJECT)
    assert project.run("build").exit_code == 0
    project.edit("provider: draft", "provider: bfl")
    result = project.run("plan")
    assert "regenerate (generator: draft -> flux)" in result.stdout


def test_bad_settings_are_located_errors(project: Project) -> None:
    project.manifest(DRAFT_PROJECT.replace("jobs: 2", "jobs: 0\n  colour: red"))
    result = project.run("validate")
    assert result.exit_code == 1
    assert "flexforge.yaml:4:9: settings.jobs: 0 is less than the minimum of 1" in result.stderr
    assert "settings.colour: unknown key 'colour'" in result.stderr


def test_refuse_policy_starts_nothing_over_budget(project: Project) -> None:
    project.manifest(
        DRAFT_PROJECT.replace(
            "provider: draft", "provider: bfl\n  max_cost_usd: 0.01\n  max_cost_policy: refuse"
        )
    )
    result = project.run("build")
    assert result.exit_code == 1
    assert "over the limit $0.01" in result.stderr and "nothing was started" in result.stderr
    assert not (project.root / "assets").exists()
