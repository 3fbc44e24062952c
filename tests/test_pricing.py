"""Estimates that match the bill: whole megapixels rounded up per image, references at least 1 MP."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

import pytest

from flexforge import models
from flexforge.emulator import billing
from flexforge.emulator.testing import RunningEmulator
from flexforge.pricing import billed_mp, estimate_usd, price_basis
from flexforge.store import Store
from tests.helpers import Project, png
from tests.support.emulator import serve_builds


def test_a_real_bfl_answer_is_reproduced() -> None:
    # A reseller quoting BFL: pro at 1.98 MP cost 4.5 credits = 3 + 1 x 1.5.
    assert 1408 * 1408 == 1_982_464
    assert estimate_usd("flux-2-pro", 1408, 1408) == pytest.approx(0.045)


def test_each_image_is_rounded_up_and_each_reference_counts_at_least_one_megapixel() -> None:
    assert billed_mp(64, 64) == 1.0
    assert billed_mp(1000, 1000) == 1.0  # exactly one unit is not rounded up
    assert billed_mp(1024, 1024) == 2.0
    assert billed_mp(64, 64, reference=True) == 1.0
    # Eight small references: 8 MP billed, not 0.03 MP.
    eight = [(64, 64)] * 8
    assert estimate_usd("flux-2-flex", 512, 512, eight) == pytest.approx(0.05 + 8 * 0.05)


def test_cometapi_is_estimated_per_request_where_its_price_is_known() -> None:
    big = estimate_usd("flux-2-flex", 2048, 2048, [(2048, 2048)] * 3, provider="cometapi")
    assert big == estimate_usd("flux-2-flex", 64, 64, provider="cometapi") == 0.008
    assert price_basis("flux-2-flex", "cometapi") == "cometapi per request"
    # No published CometAPI price for pro: BFL's table, and the message says so.
    assert estimate_usd("flux-2-pro", 1408, 1408, provider="cometapi") == pytest.approx(0.045)
    assert "no cometapi price known for flux-2-pro" in price_basis("flux-2-pro", "cometapi")


def test_previews_cost_what_their_model_costs() -> None:
    assert estimate_usd("flux-2-pro-preview", 1024, 768) == estimate_usd("flux-2-pro", 1024, 768)
    assert estimate_usd("flux-2-klein-9b-preview", 512, 512) == estimate_usd("flux-2-klein-9b", 512, 512)


def test_the_estimate_matches_the_emulators_independent_bill_on_random_requests() -> None:
    rng = random.Random(10)
    for _ in range(2000):
        model = rng.choice(list(models.MODELS))
        width, height = rng.randrange(64, 2049, 16), rng.randrange(64, 2049, 16)
        if width * height > models.MAX_PIXELS:
            continue
        refs = [(rng.randrange(16, 4000), rng.randrange(16, 4000)) for _ in range(rng.randrange(0, 5))]
        estimate = estimate_usd(model, width, height, refs)
        bill = billing.credits(model, width, height, list(refs)) / 100
        assert estimate == pytest.approx(bill, abs=1e-9), (model, width, height, refs)


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def test_max_cost_reserves_the_rounded_estimate_of_small_references(
    project: Project, emu: RunningEmulator
) -> None:
    refs = [f"refs/r{i}.png" for i in range(8)]
    for i, ref in enumerate(refs):
        png(project.root / ref, (64, 64), (i * 30, 0, 0))
    lines = ["version: 1", "defaults: {width: 256, height: 256}", "assets:"]
    lines += [f"  a{i}: {{prompt: 'edit {i}', seed: {i}, references: {json.dumps(refs)}}}" for i in range(4)]
    project.write("flexforge.yaml", "\n".join(lines) + "\n")
    plan = project.run("plan", "--json", "--provider", "emulator").json()
    each = plan["assets"][0]["estimated_cost_usd"]
    assert each == pytest.approx(0.05 + 8 * 0.05)  # fractions would say 0.0533

    result = project.run("build", "--provider", "emulator", "--jobs", "1", "--max-cost", f"{each * 2.5:.4f}")

    assert result.exit_code == 1
    assert len(project.lock()["assets"]) == 2
    assert len(re.findall(r"^  skipped: \S+: not started: its estimate", result.stderr, re.M)) == 2
    stats = emu.stats()
    assert stats["submissions"] == 2
    assert stats["charged_credits"] / 100 == pytest.approx(2 * each)  # the bill is the estimate
    ledger = Store(project.root / ".flexforge").ledger()
    assert {(r.provider, r.cost_source) for r in ledger} == {("emulator", "reported")}


def test_plan_says_how_cometapi_runs_are_estimated(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write(
        "flexforge.yaml",
        "version: 1\nassets:\n  a: {prompt: x, seed: 1}\n  b: {model: flux-2-pro, prompt: y, seed: 2}\n",
    )
    monkeypatch.setenv("COMETAPI_KEY", "sk-comet-test-0000000000")

    planned = project.run("plan", "--provider", "cometapi")

    assert planned.exit_code == 0, planned.stderr
    assert "~$0.0080" in planned.stdout  # flex: per request, whatever the size
    assert (
        "Estimated with flux-2-flex: cometapi per request; flux-2-pro: BFL's per-megapixel table "
        "(no cometapi price known for flux-2-pro)."
    ) in planned.stdout
