"""Every way a task can go wrong, through the real provider against the emulator over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from flexforge.emulator.testing import RunningEmulator
from flexforge.errors import ProviderError
from flexforge.imaging import verify_image
from tests.support.emulator import (
    SECRET,
    EmulatorFactory,
    RecordingTask,
    bfl,
    comet,
    generate,
    image_request,
)


def submit_statuses(emu: RunningEmulator) -> list[object]:
    return [record["status"] for record in emu.requests()]


def fail(emu: RunningEmulator, task: RecordingTask | None = None, **request: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        generate(bfl(emu), image_request(**request), task)
    return info.value


# --- refusals at submission -------------------------------------------------------------------


def test_402_out_of_credits_is_fatal_and_not_retried(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(credits=1.0)

    error = fail(emu)

    assert error.fatal
    assert "402" in str(error) and "credits" in str(error)
    assert submit_statuses(emu) == [402]
    assert emu.stats()["charged_credits"] == 0


def test_403_bad_key_is_fatal_one_line_naming_the_variable(emulator: RunningEmulator) -> None:
    wrong = "sk-wrong-key-0000000000000000"
    task = RecordingTask()
    with pytest.raises(ProviderError) as info:
        generate(bfl(emulator, key=wrong), image_request(), task)

    error = info.value
    assert error.fatal
    assert "BFL_API_KEY" in str(error) and "403" in str(error)
    assert "\n" not in str(error)
    assert wrong not in str(error)
    assert submit_statuses(emulator) == [403]
    assert task.submissions == [] and task.logs == []


def test_cometapi_401_bad_key_is_fatal_naming_its_variable(emulator: RunningEmulator) -> None:
    with pytest.raises(ProviderError) as info:
        generate(comet(emulator, key="sk-wrong-key-0000000000000000"), image_request())

    assert info.value.fatal
    assert "COMETAPI_KEY" in str(info.value) and "401" in str(info.value)
    assert submit_statuses(emulator) == [401]


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"steps": 80}, "steps: Input should be less than or equal to 50"),
        ({"width": 100}, "width: Input should be a multiple of 16"),
        ({"guidance": 12.0}, "guidance: Input should be less than or equal to 10"),
    ],
)
def test_422_fails_the_asset_with_the_field_and_message(
    emulator: RunningEmulator, request_fields: dict[str, Any], expected: str
) -> None:
    error = fail(emulator, **request_fields)

    assert not error.fatal
    assert "422" in str(error)
    assert expected in str(error)
    assert submit_statuses(emulator) == [422]


def test_cometapi_500_invalid_request_is_not_retried(emulator: RunningEmulator) -> None:
    with pytest.raises(ProviderError) as info:
        generate(comet(emulator), image_request(steps=80))

    assert not info.value.fatal
    assert "steps" in str(info.value) and "less than or equal to 50" in str(info.value)
    assert submit_statuses(emulator) == [500]


# --- transient trouble ------------------------------------------------------------------------


def test_5xx_on_submit_poll_and_download_are_retried(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(
        script=("submit:500", "submit:503", "poll:503", "poll:500", "download:500", "download:503")
    )
    task = RecordingTask()

    image = generate(bfl(emu), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    stats = emu.stats()
    assert stats["submissions"] == 1 and stats["duplicates"] == 0
    assert stats["responses"]["submit"] == {"500": 1, "503": 1, "200": 1}
    assert sum("retry" in line for line in task.logs) == 6
    assert task.finished == 1


def test_dropped_connections_are_retried_and_a_lost_submit_is_flagged_as_maybe_charged(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(script=("submit:drop", "poll:drop", "download:drop"))
    task = RecordingTask()

    generate(bfl(emu), image_request(), task)

    # The first submission created a task whose answer was lost: the retry pays again, and says so.
    assert emu.stats()["duplicates"] == 1
    assert submit_statuses(emu) == ["dropped", 200]
    assert any("may have created and charged" in line for line in task.logs)
    assert len(task.submissions) == 1


def test_timeouts_are_retried_and_a_timed_out_submission_is_flagged_as_maybe_charged(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(hang_seconds=0.4, script=("submit:hang", "poll:hang", "download:hang"))
    task = RecordingTask()

    image = generate(bfl(emu, http_timeout=0.15), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    timeouts = [line for line in task.logs if "ReadTimeout" in line]
    assert [line.split(":")[0] for line in timeouts] == ["submit", "poll", "download"]
    assert "may have created and charged" in timeouts[0]
    assert emu.stats()["duplicates"] == 1


def test_5xx_that_never_ends_fails_the_asset_after_bounded_retries(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"submit:503": 1.0})

    error = fail(emu)

    assert not error.fatal
    assert "failed after 5 attempts" in str(error) and "503" in str(error)
    assert submit_statuses(emu) == [503] * 5


def test_a_lost_submission_that_stays_lost_says_it_may_have_been_charged(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(faults={"submit:drop": 1.0})

    error = fail(emu)

    assert "may have created and charged" in str(error)
    assert emu.stats()["submissions"] == 5


def test_a_poll_that_keeps_failing_keeps_the_task_journaled(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"poll:500": 1.0})
    task = RecordingTask()

    error = fail(emu, task)

    assert "poll failed after 5 attempts" in str(error)
    assert len(task.submissions) == 1
    assert task.finished == 0  # still fetchable later: the next build polls instead of paying


def test_429_storm_completes_without_failure_and_lowers_tasks_in_flight(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(max_in_flight=3, latency=0.15, faults={"submit:429": 0.3})
    provider = bfl(emu)
    tasks = [RecordingTask() for _ in range(16)]

    async def build_all() -> list[object]:
        import asyncio

        try:
            return await asyncio.gather(
                *(provider.generate(image_request(seed=i), task) for i, task in enumerate(tasks))
            )
        finally:
            await provider.aclose()

    from tests.support.emulator import run

    images = run(build_all())

    assert len(images) == 16
    stats = emu.stats()
    assert stats["submissions"] == 16 and stats["duplicates"] == 0
    assert stats["responses"]["submit"]["429"] > 0
    assert provider.limiter.lowest < provider.max_in_flight
    assert any("429" in line for task in tasks for line in task.logs)


# --- outcomes of the task itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "status"),
    [("moderate_request", "Request Moderated"), ("moderate_content", "Content Moderated")],
)
def test_moderation_fails_with_reasons_and_a_hint_and_is_not_retried(
    emulator_factory: EmulatorFactory, knob: str, status: str
) -> None:
    emu = emulator_factory(**{knob: ("northwind",)})
    task = RecordingTask()

    error = fail(emu, task)

    message = str(error)
    assert not error.fatal
    assert message.startswith(status)
    assert "Flagged term: northwind" in message
    assert "rephrase" in message and "safety_tolerance (now 2" in message
    assert emu.stats()["submissions"] == 1
    assert emu.stats()["charged_credits"] == 0
    assert task.finished == 1


@pytest.mark.parametrize(("kind", "status"), [("error", "Error"), ("failed", "Failed")])
def test_error_and_failed_statuses_fail_with_details(
    emulator_factory: EmulatorFactory, kind: str, status: str
) -> None:
    emu = emulator_factory(faults={f"task:{kind}": 1.0})
    task = RecordingTask()

    error = fail(emu, task)

    assert f"ended with status {status}" in str(error)
    assert "emulated generation failure" in str(error)
    assert emu.stats()["submissions"] == 1
    assert task.finished == 1


def test_a_task_that_stays_pending_times_out_but_stays_journaled(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=30)
    task = RecordingTask()

    with pytest.raises(ProviderError, match="still not ready"):
        generate(bfl(emu, task_timeout=0.2), image_request(), task)
    assert task.finished == 0


# --- downloads --------------------------------------------------------------------------------


def test_a_truncated_download_is_fetched_again(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("download:truncate",))
    task = RecordingTask()

    image = generate(bfl(emu), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    assert any("broken" in line for line in task.logs)
    assert emu.stats()["downloads"] == 2


def test_downloads_that_stay_broken_fail_clearly(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"download:truncate": 1.0})
    task = RecordingTask()

    error = fail(emu, task)

    assert "is broken" in str(error) and "truncated" in str(error)
    assert emu.stats()["submissions"] == 1
    assert task.finished == 0


def test_an_expired_download_url_is_replaced_by_polling_again(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("download:expired",))
    task = RecordingTask()

    generate(bfl(emu), image_request(), task)

    assert emu.stats()["responses"]["download"] == {"403": 1, "200": 1}
    assert any("fresh download URL" in line for line in task.logs)
    assert emu.stats()["submissions"] == 1


def test_download_urls_that_are_always_expired_fail_clearly(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(url_lifetime=0)

    error = fail(emu)

    assert "download URL" in str(error) and "expired" in str(error)
    assert emu.stats()["submissions"] == 1


# --- the key stays secret ---------------------------------------------------------------------


def test_the_key_never_appears_in_errors_or_logs(emulator_factory: EmulatorFactory) -> None:
    # The emulator echoes the flagged term, so moderating the key itself puts it in an answer.
    emu = emulator_factory(
        moderate_request=(SECRET,),
        script=("submit:drop", "submit:500", "poll:drop", "download:expired"),
    )
    texts: list[str] = []

    task = RecordingTask()
    generate(bfl(emu), image_request(), task)
    texts += task.logs

    for provider, request in [
        (bfl(emu), image_request(prompt=f"a poster {SECRET}")),
        (bfl(emu), image_request(steps=99)),
        (comet(emu), image_request(steps=99)),
    ]:
        task = RecordingTask()
        with pytest.raises(ProviderError) as info:
            generate(provider, request, task)
        texts += [str(info.value), *task.logs]

    emu.configure(credits=0)
    with pytest.raises(ProviderError) as info:
        generate(bfl(emu), image_request())
    texts.append(str(info.value))

    assert any("***" in text for text in texts)  # the echoed key was scrubbed
    assert len(texts) >= 8
    assert not [text for text in texts if SECRET in text]
