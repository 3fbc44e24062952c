"""Credits before spending: a build whose estimate the balance cannot cover pays nothing."""

from __future__ import annotations

import re

import pytest

from tests.helpers import Project
from tests.support.emulator import serve_builds


def manifest(project: Project, n: int) -> float:
    lines = ["version: 1", "defaults: {width: 128, height: 128}", "assets:"]
    lines += [f'  a{i}: {{prompt: "asset {i}", seed: {i}}}' for i in range(n)]
    project.write("flexforge.yaml", "\n".join(lines) + "\n")
    plan = project.run("plan", "--json", "--provider", "emulator").json()
    return float(plan["estimated_cost_usd"])


def credit_calls(stats: dict[str, object]) -> int:
    responses = stats["responses"]
    assert isinstance(responses, dict)
    return sum(responses.get("credits", {}).values())


def test_a_balance_below_the_estimate_stops_the_build_before_paying_anything(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimate = 0
    with serve_builds(monkeypatch, credits=1000) as emu:
        estimate = manifest(project, 4)  # 4 x 5 credits
        emu.configure(credits=estimate * 100 - 1)

        result = project.run("build", "--provider", "emulator")

        assert result.exit_code == 1
        assert re.search(
            r"balance is 19 credits \(\$0\.19\), below this build's estimate of \$0\.20", result.stderr
        )
        assert "nothing was submitted" in result.stderr and "--ignore-credits" in result.stderr
        assert "Traceback" not in result.stderr
        assert emu.stats()["submissions"] == 0 and credit_calls(emu.stats()) == 1
        assert not (project.root / "flexforge.lock").exists()


def test_ignore_credits_builds_until_the_api_says_402(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch) as emu:
        estimate = manifest(project, 4)
        emu.configure(credits=estimate * 100 / 2)

        result = project.run("build", "--provider", "emulator", "--jobs", "1", "--ignore-credits")

        assert result.exit_code == 1
        assert "402" in result.stderr
        assert len(project.lock()["assets"]) == 2
        assert credit_calls(emu.stats()) == 0


def test_the_balance_need_only_cover_max_cost(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_builds(monkeypatch) as emu:
        estimate = manifest(project, 4)
        emu.configure(credits=estimate * 100 / 2)

        result = project.run(
            "build", "--provider", "emulator", "--jobs", "1", "--max-cost", f"{estimate / 2}"
        )

        assert len(project.lock()["assets"]) == 2, result.stderr
        assert "below this build's estimate" not in result.stderr


def test_plan_is_offline_unless_asked_to_check_credits(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, credits=12345) as emu:
        manifest(project, 2)
        plain = project.run("plan", "--provider", "emulator")
        assert "Credits" not in plain.stdout and credit_calls(emu.stats()) == 0

        checked = project.run("plan", "--provider", "emulator", "--check-credits")
        assert checked.exit_code == 0, checked.stderr
        assert (
            "Credits: balance 12345 credits ($123.45) on emulator, estimate $0.10: enough." in checked.stdout
        )

        emu.configure(credits=3)
        doc = project.run("plan", "--json", "--provider", "emulator", "--check-credits").json()
        assert doc["credits"] == {
            "provider": "emulator",
            "balance_credits": 3,
            "balance_usd": 0.03,
            "estimated_cost_usd": 0.1,
            "enough": False,
        }
        assert credit_calls(emu.stats()) == 2


def test_cometapi_says_its_balance_cannot_be_checked(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch) as emu:
        manifest(project, 1)
        monkeypatch.setenv("COMETAPI_KEY", emu.key)
        checked = project.run("plan", "--provider", "cometapi", "--check-credits")
        assert "Credits: the cometapi balance cannot be checked (no documented endpoint)." in checked.stdout
        assert credit_calls(emu.stats()) == 0


def test_draft_needs_no_credits(project: Project) -> None:
    project.write("flexforge.yaml", "version: 1\nassets:\n  a: {prompt: x}\n")
    assert (
        "Credits: none needed (draft)."
        in project.run("plan", "--provider", "draft", "--check-credits").stdout
    )


@pytest.mark.parametrize(
    "answer",
    [{"credits": "1e9"}, {"credits": None}, {"credits": True}, {"credits": -5}, {"credits": 1e300}, {}, []],
)
def test_a_balance_that_is_no_number_never_passes_the_check(answer: object) -> None:
    import asyncio

    from flexforge import credits
    from flexforge.providers.bfl import BflProvider
    from tests.support.emulator import FAST
    from tests.support.hostile import json_answer, serving

    with serving({"/v1/credits": json_answer(answer)}) as api:
        provider = BflProvider(api.url(), "sk-test-credits-000000000000", settings=FAST)

        async def ask() -> credits.CreditCheck:
            try:
                return await credits.check(provider, "bfl", 1.0)
            finally:
                await provider.aclose()

        checked = asyncio.run(ask())

    assert checked.balance_credits is None and checked.enough is None
    assert "no usable number" in checked.line()
