"""Prompt upsampling off means off on every model; what the API followed is recorded and shown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flexforge.emulator.testing import RunningEmulator
from flexforge.emulator.validation import UPSAMPLED_SUFFIX
from flexforge.store import KeyRecord, Store
from tests.helpers import Project
from tests.support.emulator import serve_builds

PROMPT = "A poster for Northwind coffee"


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def pro_manifest(project: Project, upsampling: bool) -> None:
    project.manifest(f"""
        version: 1
        defaults: {{width: 256, height: 256}}
        assets:
          hero:
            {{model: flux-2-pro, prompt: "{PROMPT}", seed: 7, prompt_upsampling: {str(upsampling).lower()}}}
    """)


def key_records(project: Project) -> list[KeyRecord]:
    store = Store(project.root / ".flexforge")
    found = [store.key_record(p.stem) for p in (project.root / ".flexforge/keys").glob("*.json")]
    return [record for record in found if record is not None]


def test_a_pro_prompt_is_kept_when_upsampling_is_off(project: Project, emu: RunningEmulator) -> None:
    pro_manifest(project, upsampling=False)

    result = project.run("build", "--provider", "emulator")

    assert result.exit_code == 0, result.stderr
    (submission,) = emu.requests()
    assert submission["body"]["disable_pup"] is True  # type: ignore[index]
    assert "rewrote the prompt" not in result.stderr
    (record,) = key_records(project)
    assert record.result_prompt == PROMPT
    explained = project.run("explain", "hero", "--provider", "emulator").stdout
    assert f"prompt    {PROMPT}" in explained and "used " not in explained


def test_a_pro_prompt_rewritten_by_upsampling_is_recorded_shown_and_warned_about(
    project: Project, emu: RunningEmulator
) -> None:
    pro_manifest(project, upsampling=True)

    result = project.run("build", "--provider", "emulator")

    assert result.exit_code == 0, result.stderr
    (submission,) = emu.requests()
    assert "disable_pup" not in submission["body"]  # type: ignore[operator]
    assert "hero: warning: the API rewrote the prompt (prompt_upsampling is on)" in result.stderr
    (record,) = key_records(project)
    assert record.result_prompt == f"{PROMPT} {UPSAMPLED_SUFFIX}"
    explained = project.run("explain", "hero", "--provider", "emulator").stdout
    assert f"used      {PROMPT} {UPSAMPLED_SUFFIX}" in explained


def test_turning_upsampling_on_changes_the_key(project: Project, emu: RunningEmulator) -> None:
    pro_manifest(project, upsampling=False)
    assert project.run("build", "--provider", "emulator").exit_code == 0
    project.edit("prompt_upsampling: false", "prompt_upsampling: true")

    planned = project.run("plan", "--json", "--provider", "emulator").json()

    assert [(a["action"], a["reasons"]) for a in planned["assets"]] == [("regenerate", ["params"])]


def test_upsampling_on_a_klein_asset_is_a_located_error(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          k: {model: flux-2-klein-4b, prompt: x, prompt_upsampling: false}
    """)

    result = project.run("validate")

    assert result.exit_code == 1
    assert (
        "flexforge.yaml:3:42: assets.k.prompt_upsampling: 'prompt_upsampling' applies to "
        "flux-2-flex, flux-2-pro, flux-2-max only, not flux-2-klein-4b"
    ) in result.stderr
