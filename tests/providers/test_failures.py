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


def test_a_503_that_says_so_and_5xx_on_poll_and_download_are_retried(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(script=("submit:503", "poll:503", "poll:500", "download:500", "download:503"))
    task = RecordingTask()

    image = generate(bfl(emu), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    stats = emu.stats()
    assert stats["submissions"] == 1 and stats["duplicates"] == 0
    assert stats["responses"]["submit"] == {"503": 1, "200": 1}
    assert sum("retry" in line for line in task.logs) == 5
    assert task.uncertain == [] and task.finished == 1


@pytest.mark.parametrize("kind", ["500", "502", "504", "drop", "hang"])
@pytest.mark.parametrize("created", [True, False])
def test_an_ambiguous_submit_failure_fails_the_asset_as_maybe_charged_and_is_not_replayed(
    emulator_factory: EmulatorFactory, kind: str, created: bool
) -> None:
    emu = emulator_factory(
        script=(f"submit:{kind}",), submit_fault_task_rate=1.0 if created else 0.0, hang_seconds=0.5
    )
    task = RecordingTask()

    with pytest.raises(ProviderError) as info:
        generate(bfl(emu, http_timeout=0.2), image_request(), task)

    message = str(info.value)
    assert "may have been charged" in message and "not sent again" in message
    assert "FLEXFORGE_SUBMIT_REPLAY=1" in message
    assert len(emu.requests()) == 1  # sent once, never again
    assert emu.stats()["submissions"] == int(created)  # the task the emulator made, or none
    assert emu.stats()["ambiguous_submits"] == len(task.uncertain) == 1
    assert task.submissions == []


def test_one_replay_when_allowed_pays_at_most_twice(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("submit:drop",))
    task = RecordingTask()

    image = generate(bfl(emu, submit_replay=1), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    assert len(task.uncertain) == 1
    assert any("replaying it once" in line for line in task.logs)
    assert emu.stats()["submissions"] == 2 and emu.stats()["duplicates"] == 1


def test_the_replay_itself_is_never_replayed(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"submit:500": 1.0})
    task = RecordingTask()

    with pytest.raises(ProviderError, match="may have been charged"):
        generate(bfl(emu, submit_replay=1), image_request(), task)

    assert emu.stats()["submissions"] == 2 and len(task.uncertain) == 2


def test_no_replay_when_the_budget_has_no_room(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("submit:502",))
    task = RecordingTask()
    task.allow_replay = False

    with pytest.raises(ProviderError, match="--max-cost has no room"):
        generate(bfl(emu, submit_replay=1), image_request(), task)

    assert len(emu.requests()) == 1


def test_submit_replay_is_at_most_one() -> None:
    from flexforge.errors import UsageError
    from flexforge.providers._http import HttpSettings

    assert HttpSettings.from_env({"FLEXFORGE_SUBMIT_REPLAY": "1"}).submit_replay == 1
    with pytest.raises(UsageError, match="must be 0 or 1"):
        HttpSettings.from_env({"FLEXFORGE_SUBMIT_REPLAY": "2"})


@pytest.mark.parametrize(
    ("status", "headers", "text", "safe"),
    [
        (503, {"Retry-After": "5"}, "", True),
        (503, {}, '{"detail": "Service temporarily unavailable"}', True),
        (503, {}, "<html>upstream overloaded, try again</html>", True),
        (503, {}, '{"detail": "internal failure"}', False),
        (500, {"Retry-After": "5"}, "", False),
        (502, {}, "Bad Gateway", False),
        (504, {}, "Gateway Timeout", False),
    ],
)
def test_only_a_503_that_says_so_is_surely_refused(
    status: int, headers: dict[str, str], text: str, safe: bool
) -> None:
    import httpx

    from flexforge.providers._http import _surely_refused

    assert _surely_refused(httpx.Response(status, headers=headers, text=text)) is safe


def test_dropped_polls_and_downloads_are_retried(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("poll:drop", "download:drop"))
    task = RecordingTask()

    generate(bfl(emu), image_request(), task)

    assert emu.stats()["submissions"] == 1
    assert sum("retry" in line for line in task.logs) == 2


def test_timed_out_polls_and_downloads_are_retried(emulator_factory: EmulatorFactory) -> None:
    # A timeout no unhung answer comes near, even on a loaded machine: the submit must not time
    # out (that would be an ambiguous submission, failed on purpose).
    emu = emulator_factory(hang_seconds=3.0, script=("poll:hang", "download:hang"))
    task = RecordingTask()

    image = generate(bfl(emu, http_timeout=1.5), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    timeouts = [line for line in task.logs if "ReadTimeout" in line]
    assert [line.split(":")[0] for line in timeouts] == ["poll", "download"]
    assert emu.stats()["duplicates"] == 0


def test_503s_that_never_end_fail_the_asset_after_bounded_retries(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"submit:503": 1.0})

    error = fail(emu)

    assert not error.fatal
    assert "failed after 5 attempts" in str(error) and "503" in str(error)
    assert submit_statuses(emu) == [503] * 5
    assert emu.stats()["submissions"] == 0


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
        script=("submit:503", "submit:429", "poll:drop", "download:expired"),
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


def test_an_unknown_status_ends_the_task_at_once_naming_it(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(faults={"task:unknown": 1.0})
    task = RecordingTask()

    # A task timeout far beyond the test: only treating the status as the end can finish it.
    with pytest.raises(ProviderError) as info:
        generate(bfl(emu, task_timeout=60), image_request(), task)

    assert "ended with status 'Cancelled', which flexforge does not know" in str(info.value)
    assert task.finished == 1  # the task is over: the journal forgets it
    assert "still not ready" not in str(info.value)


def test_retry_after_on_poll_answers_spaces_the_polls(emulator_factory: EmulatorFactory) -> None:
    # The task takes 0.5 s and the client would poll every 10 ms; each answer asks for 0.3 s.
    emu = emulator_factory(latency=0.5, poll_retry_after=0.3)

    generate(bfl(emu, poll_interval=0.01, poll_max_interval=1.0), image_request())

    assert 2 <= emu.stats()["polls"] <= 3


def test_a_huge_retry_after_is_bounded(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=0.1, poll_retry_after=3600)

    # Bounded by poll_max_interval (50 ms in the fast settings): the build does not wait an hour.
    image = generate(bfl(emu), image_request())

    verify_image(image.data, 128, 96, "png")
