"""The emulator speaks the API of reference/bfl-api.md: routes, auth, statuses, money."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from flexforge.emulator.testing import RunningEmulator
from flexforge.emulator.validation import UPSAMPLED_SUFFIX
from flexforge.pricing import estimate_usd
from tests.support.emulator import SECRET, EmulatorFactory, http

BODY = {"prompt": "a red bicycle", "width": 256, "height": 128, "seed": 3, "output_format": "png"}
BFL_AUTH = {"x-key": SECRET}
COMET_AUTH = {"Authorization": f"Bearer {SECRET}"}


def submit(emu: RunningEmulator, body: dict[str, Any] = BODY, model: str = "flux-2-pro") -> httpx.Response:
    return http().post(f"{emu.url}/v1/{model}", json=body, headers=BFL_AUTH)


def poll_until_done(url: str, headers: dict[str, str] = BFL_AUTH) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    for _ in range(200):
        answer = http().get(url, headers=headers).json()
        seen.append(answer["status"])
        if answer["status"] != "Pending":
            return answer, seen
        time.sleep(0.01)
    raise AssertionError("still pending")


def test_submit_answers_id_polling_url_and_realistic_cost(emulator: RunningEmulator) -> None:
    response = submit(emulator, {**BODY, "width": 1024, "height": 1024}, model="flux-2-flex")

    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert answer["cost"] == pytest.approx(estimate_usd("flux-2-flex", 1024, 1024) * 100, abs=1e-3)
    assert answer["output_mp"] == pytest.approx(1.0486, abs=1e-4)
    assert answer["input_mp"] == 0


def test_tasks_are_pending_with_progress_then_ready(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=0.3)
    answer = submit(emu).json()

    final, seen = poll_until_done(answer["polling_url"])

    assert seen[0] == "Pending" and seen[-1] == "Ready"
    first = http().get(answer["polling_url"], headers=BFL_AUTH).json()
    assert first["progress"] == 1.0
    result = final["result"]
    assert set(result) >= {"sample", "prompt", "seed", "start_time", "end_time", "duration"}
    # flex's prompt_upsampling defaults to true: the prompt came back rewritten
    assert result["seed"] == 3 and result["prompt"] == f"a red bicycle {UPSAMPLED_SUFFIX}"
    assert result["duration"] == pytest.approx(0.3, abs=0.01)


def test_pending_carries_progress(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=5)
    answer = submit(emu).json()
    time.sleep(0.1)

    pending = http().get(answer["polling_url"], headers=BFL_AUTH).json()

    assert pending["status"] == "Pending"
    assert 0 < pending["progress"] < 1
    assert pending["result"] is None


def test_the_polling_url_is_not_the_global_route(emulator: RunningEmulator) -> None:
    answer = submit(emulator).json()
    task_id = answer["id"]

    assert answer["polling_url"] == f"{emulator.url}/cluster-eu2/v1/get_result?id={task_id}"
    # A client that rebuilds the URL on the base host loses the task, as on the real API.
    rebuilt = http().get(f"{emulator.url}/v1/get_result", params={"id": task_id}, headers=BFL_AUTH).json()
    assert rebuilt["status"] == "Task not found"


def test_the_polling_url_may_live_on_another_port(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(poll_port=0)
    answer = submit(emu).json()

    url = httpx.URL(answer["polling_url"])
    assert url.port != httpx.URL(emu.url).port
    final, _ = poll_until_done(answer["polling_url"])
    assert final["status"] == "Ready"


def test_unknown_tasks_routes_and_models(emulator: RunningEmulator) -> None:
    unknown = http().get(f"{emulator.url}/cluster-eu2/v1/get_result?id=nope", headers=BFL_AUTH)
    assert unknown.json()["status"] == "Task not found"

    for response in (
        http().get(f"{emulator.url}/v2/whatever", headers=BFL_AUTH),
        submit(emulator, model="flux-3-ultra"),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}


def test_a_wrong_or_missing_key_is_403(emulator: RunningEmulator) -> None:
    for headers in ({}, {"x-key": "not-the-key"}):
        response = http().post(f"{emulator.url}/v1/flux-2-pro", json=BODY, headers=headers)
        assert response.status_code == 403
        assert response.json() == {"detail": "Not authenticated - Invalid Authentication"}
    answer = submit(emulator).json()
    assert http().get(answer["polling_url"]).status_code == 403


def test_credits_and_402(emulator_factory: EmulatorFactory) -> None:
    cost = estimate_usd("flux-2-pro", 256, 128) * 100
    emu = emulator_factory(credits=cost * 1.5)

    assert submit(emu).status_code == 200
    refused = submit(emu)

    assert refused.status_code == 402
    assert "credits" in refused.json()["detail"].lower()
    balance = http().get(f"{emu.url}/v1/credits", headers=BFL_AUTH).json()
    assert balance == {"credits": pytest.approx(cost * 0.5, abs=1e-3)}
    assert emu.stats()["charged_credits"] == pytest.approx(cost, abs=1e-3)


def test_more_tasks_in_flight_than_allowed_is_429(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(max_in_flight=2, latency=5)

    statuses = [submit(emu, {**BODY, "seed": i}).status_code for i in range(3)]

    assert statuses == [200, 200, 429]
    assert emu.stats()["in_flight"] == 2


@pytest.mark.parametrize(
    ("knob", "status", "immediately"),
    [("moderate_request", "Request Moderated", True), ("moderate_content", "Content Moderated", False)],
)
def test_moderation_statuses_carry_reasons_and_cost_nothing(
    emulator_factory: EmulatorFactory, knob: str, status: str, immediately: bool
) -> None:
    emu = emulator_factory(**{knob: ("Bicycle",)}, latency=5 if immediately else 0.05)
    answer = submit(emu).json()

    final, seen = poll_until_done(answer["polling_url"])

    assert final["status"] == status
    assert final["details"] == {"Moderation Reasons": ["Flagged term: Bicycle"]}
    assert len(seen) == 1 or not immediately
    assert emu.stats()["charged_credits"] == 0


def test_cometapi_flavour(emulator: RunningEmulator) -> None:
    response = http().post(f"{emulator.url}/flux/v1/flux-2-flex", json=BODY, headers=COMET_AUTH)
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "Pending" and "polling_url" not in answer

    final, _ = poll_until_done(f"{emulator.url}/flux/v1/get_result?id={answer['id']}", COMET_AUTH)
    assert final["status"] == "Ready"
    assert http().get(final["result"]["sample"]).status_code == 200

    # The bare key works too; a wrong one gets CometAPI's envelope and a 401.
    bare = http().post(f"{emulator.url}/flux/v1/flux-2-pro", json=BODY, headers={"Authorization": SECRET})
    assert bare.status_code == 200
    refused = http().post(
        f"{emulator.url}/flux/v1/flux-2-pro", json=BODY, headers={"Authorization": "Bearer x"}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "comet_api_error"

    invalid = http().post(
        f"{emulator.url}/flux/v1/flux-2-flex", json={**BODY, "steps": 0}, headers=COMET_AUTH
    )
    assert invalid.status_code == 500
    assert invalid.json()["error"]["code"] == "invalid_request"
    assert invalid.json()["error"]["param"] == "steps"


def test_a_bfl_task_is_unknown_to_the_cometapi_route(emulator: RunningEmulator) -> None:
    task_id = submit(emulator).json()["id"]
    answer = http().get(f"{emulator.url}/flux/v1/get_result?id={task_id}", headers=COMET_AUTH).json()
    assert answer["status"] == "Task not found"
