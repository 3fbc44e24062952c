"""Never pay twice: journaled tasks are polled, not submitted again."""

from __future__ import annotations

import asyncio
import time

import pytest

from flexforge.emulator.testing import RunningEmulator
from flexforge.imaging import verify_image
from flexforge.providers import GeneratedImage, JournalEntry
from tests.support.emulator import EmulatorFactory, RecordingTask, bfl, comet, generate, image_request, run


def journal(
    task_id: str, polling_url: str, provider: str = "bfl", cost_credits: float | None = None
) -> JournalEntry:
    return JournalEntry(
        asset="hero",
        key="k" * 64,
        provider=provider,
        task_id=task_id,
        polling_url=polling_url,
        submitted_at=time.time(),
        cost_credits=cost_credits,
    )


def interrupted_after_submit(emu: RunningEmulator) -> tuple[str, str, float | None]:
    """Submit, then cancel while polling (as Ctrl-C would): returns the journaled task."""
    provider = bfl(emu)
    task = RecordingTask()

    async def interrupt() -> None:
        job = asyncio.ensure_future(provider.generate(image_request(), task))

        def cancel_once_journaled() -> None:
            asyncio.get_running_loop().call_soon(job.cancel)

        task.on_submit = cancel_once_journaled
        try:
            await job
        except asyncio.CancelledError:
            pass
        finally:
            await provider.aclose()

    run(interrupt())
    assert task.finished == 0
    ((task_id, polling_url, cost),) = task.submissions
    return task_id, polling_url, cost


def test_a_journaled_task_is_polled_instead_of_submitted_again(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=0.3)
    task_id, polling_url, _ = interrupted_after_submit(emu)
    assert emu.stats()["submissions"] == 1

    task = RecordingTask(resumable=journal(task_id, polling_url))
    image = generate(bfl(emu), image_request(), task)

    assert image.task_id == task_id
    verify_image(image.data, 128, 96, "png")
    assert emu.stats()["submissions"] == 1
    assert task.submissions == []
    assert task.finished == 1
    assert any(task_id in line and "earlier run" in line for line in task.logs)


def test_a_journaled_task_that_is_gone_is_submitted_exactly_once_afresh(emulator: RunningEmulator) -> None:
    task_id, polling_url, _ = interrupted_after_submit(emulator)
    emulator.reset()  # the server forgot it, as an expired task is forgotten

    task = RecordingTask(resumable=journal(task_id, polling_url))
    image = generate(bfl(emulator), image_request(), task)

    assert emulator.stats()["submissions"] == 1
    ((new_id, _, _),) = task.submissions
    assert new_id != task_id and image.task_id == new_id
    assert any("Task not found" in line for line in task.logs)
    assert task.finished == 2  # the lost task, then the fresh one


def test_a_resumed_task_keeps_its_seed_and_the_cost_its_submission_reported(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(latency=0.2)
    task_id, polling_url, cost = interrupted_after_submit(emu)
    assert cost is not None and cost > 0

    resumed = RecordingTask(journal(task_id, polling_url, cost_credits=cost))
    image: GeneratedImage = generate(bfl(emu), image_request(), resumed)

    assert image.seed == 42
    assert image.cost_credits == cost  # paid once, by the interrupted run, and recorded now
    assert resumed.submissions == []


def test_cometapi_polls_its_get_result_route_when_no_polling_url_is_given(
    emulator_factory: EmulatorFactory,
) -> None:
    for with_url in (False, True):
        emu = emulator_factory(comet_polling_url=with_url)
        task = RecordingTask()

        image = generate(comet(emu), image_request(model="flux-2-max", output_format="jpeg"), task)

        verify_image(image.data, 128, 96, "jpeg")
        ((task_id, polling_url, _),) = task.submissions
        assert polling_url == f"{emu.url}/flux/v1/get_result?id={task_id}"
        assert image.cost_credits is None  # CometAPI's answer carries no cost
        assert task.finished == 1


def test_cometapi_resumes_a_journaled_task(emulator: RunningEmulator) -> None:
    provider = comet(emulator)
    first = RecordingTask()
    generate(provider, image_request(), first)
    ((task_id, polling_url, _),) = first.submissions

    task = RecordingTask(resumable=journal(task_id, polling_url, provider="cometapi"))
    image = generate(comet(emulator), image_request(), task)

    assert image.task_id == task_id
    assert emulator.stats()["submissions"] == 1


@pytest.mark.parametrize("upstream", ["https://api.eu2.bfl.ai", "http://localhost:9"])
def test_cometapi_never_follows_a_polling_url_to_another_host(
    emulator_factory: EmulatorFactory, upstream: str
) -> None:
    # A reseller passing BFL's polling_url through: the Comet key must not go there (BFL would
    # answer 403 and the run would stop as "bad key"); CometAPI's own get_result knows the task.
    emu = emulator_factory(comet_upstream_url=upstream)
    task = RecordingTask()

    image = generate(comet(emu), image_request(model="flux-2-pro"), task)

    verify_image(image.data, 128, 96, "png")
    ((task_id, polling_url, _),) = task.submissions
    assert polling_url == f"{emu.url}/flux/v1/get_result?id={task_id}"
    assert any("polling URL on another host" in line for line in task.logs)
    assert emu.stats()["submissions"] == 1
