"""Hundreds of concurrent polls, and the counters tests read back."""

from __future__ import annotations

import asyncio

import httpx

from flexforge.emulator.state import body_digest
from flexforge.emulator.testing import RunningEmulator
from tests.support.emulator import SECRET, EmulatorFactory, http, run

AUTH = {"x-key": SECRET}


def test_300_concurrent_polls(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=0.5, max_in_flight=100)
    urls = [
        http()
        .post(f"{emu.url}/v1/flux-2-klein-4b", json={"prompt": f"p{i}"}, headers=AUTH)
        .json()["polling_url"]
        for i in range(30)
    ]

    async def poll_all() -> list[int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            gate = asyncio.Event()

            async def one(url: str) -> int:
                await gate.wait()  # all 300 go at once
                response = await client.get(url, headers=AUTH)
                assert response.json()["status"] in ("Pending", "Ready")
                return response.status_code

            jobs = [asyncio.ensure_future(one(urls[i % len(urls)])) for i in range(300)]
            await asyncio.sleep(0)
            gate.set()
            return await asyncio.gather(*jobs)

    statuses = run(poll_all())

    assert statuses == [200] * 300
    assert emu.stats()["polls"] == 300


def test_stats_count_submissions_per_body_and_duplicates(emulator: RunningEmulator) -> None:
    body = {"prompt": "twice", "seed": 1}
    for _ in range(2):
        http().post(f"{emulator.url}/v1/flux-2-pro", json=body, headers=AUTH)
    http().post(f"{emulator.url}/v1/flux-2-max", json=body, headers=AUTH)  # another model: another request
    http().post(f"{emulator.url}/v1/flux-2-pro", json={"prompt": 1}, headers=AUTH)  # refused: not counted

    stats = emulator.stats()

    assert (stats["submissions"], stats["unique_bodies"], stats["duplicates"]) == (3, 2, 1)
    assert stats["per_body"][body_digest("/v1/flux-2-pro", body)] == 2
    assert stats["responses"]["submit"] == {"200": 3, "422": 1}
    assert stats["tasks"]["total"] == 3
    assert stats["charged_credits"] > 0
    assert http().get(f"{emulator.url}/_emulator/stats").json()["submissions"] == 3
    assert len(emulator.requests()) == 4
    assert len(http().get(f"{emulator.url}/_emulator/requests").json()) == 4


def test_reset_and_configure_over_http(emulator: RunningEmulator) -> None:
    http().post(f"{emulator.url}/v1/flux-2-pro", json={"prompt": "x"}, headers=AUTH)

    assert http().post(f"{emulator.url}/_emulator/reset").status_code == 200
    assert emulator.stats()["submissions"] == 0

    configured = http().post(f"{emulator.url}/_emulator/config", json={"credits": 0})
    assert configured.json() == {"configured": ["credits"]}
    assert http().post(f"{emulator.url}/v1/flux-2-pro", json={"prompt": "x"}, headers=AUTH).status_code == 402
    refused = http().post(f"{emulator.url}/_emulator/config", json={"latencyy": 1})
    assert refused.status_code == 422 and "unknown knob" in refused.json()["detail"]


def test_submit_and_poll_faults_follow_the_script_then_the_dice(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("submit:429", "submit:ok", "submit:503", "poll:500"))
    submits = [http().post(f"{emu.url}/v1/flux-2-pro", json={"prompt": "x"}, headers=AUTH) for _ in range(4)]

    assert [response.status_code for response in submits] == [429, 200, 503, 200]
    url = f"{emu.url}/cluster-eu2/v1/get_result?id=x"
    assert [http().get(url, headers=AUTH).status_code for _ in range(2)] == [500, 200]
    assert emu.stats()["faults"] == {"submit:429": 1, "submit:503": 1, "poll:500": 1}


def test_fault_dice_are_reproducible_with_a_seed(emulator_factory: EmulatorFactory) -> None:
    def statuses(seed: int) -> list[int]:
        emu = emulator_factory(seed=seed, faults={"submit:500": 0.3, "submit:429": 0.2})
        return [
            http().post(f"{emu.url}/v1/flux-2-pro", json={"prompt": "x"}, headers=AUTH).status_code
            for _ in range(20)
        ]

    first = statuses(5)
    assert first == statuses(5)
    assert {429, 500, 200} <= set(first)
