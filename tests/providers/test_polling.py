"""When tasks are polled: learnt from finished tasks, woken by the first one, bounded in polls a second."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest

from flexforge.errors import UsageError
from flexforge.providers import _polling
from flexforge.providers._http import HttpSettings
from flexforge.providers._polling import PollTimer
from tests.support.emulator import EmulatorFactory, RecordingTask, bfl, image_request, run

INTERVAL = 0.5


def test_before_any_task_finished_the_first_look_falls_within_the_first_interval() -> None:
    timer = PollTimer()

    firsts = [timer.wait(0.0, INTERVAL, first=True) for _ in range(200)]

    assert all(0.0 <= wait <= INTERVAL for wait in firsts)
    assert len({round(wait, 3) for wait in firsts}) > 20  # spread: the wave is sampled finely
    assert timer.wait(0.3, INTERVAL) == INTERVAL  # later looks: the plain interval


def test_a_finished_task_tells_the_others_when_to_look() -> None:
    timer = PollTimer()
    timer.finished(0.9, 1.0)  # last seen Pending at 0.9 s, Ready at 1.0 s
    fine = timer.fine()

    assert fine == pytest.approx(0.01)  # a hundredth of the expected second
    # Sleep until halfway between the last Pending and the Ready look: each look narrows it.
    assert timer.wait(0.0, INTERVAL, first=True) == pytest.approx(0.95)
    assert timer.wait(0.5, INTERVAL) == pytest.approx(0.45)
    assert timer.wait(0.95, INTERVAL) == pytest.approx(fine)  # near due: finely
    assert timer.wait(1.5, INTERVAL) == INTERVAL  # past every duration seen: back to the interval


def _poll_like_a_task(timer: PollTimer, duration: float) -> tuple[int, float]:
    """Look at a task that is Ready `duration` s after submission when the timer says to, as
    _TaskRun._wait does but on a simulated clock: (looks made, lateness of the Ready look)."""
    elapsed = timer.wait(0.0, INTERVAL, first=True)
    looks, pending = 1, None
    while elapsed < duration:
        pending = elapsed
        elapsed += timer.wait(elapsed, INTERVAL)
        looks += 1
    timer.finished(pending, elapsed)
    return looks, elapsed - duration


def test_tasks_of_one_duration_are_soon_seen_ready_within_a_fine_step_in_two_looks() -> None:
    timer = PollTimer()
    timer.finished(0.55, 1.2)  # a first wave polled coarsely: a wide bracket

    seen = [_poll_like_a_task(timer, 1.0) for _ in range(40)]

    settled = seen[10:]
    assert max(late for _, late in settled) <= 1.05 * timer.fine(), seen  # fine: learnt, ~20 ms
    assert sum(looks for looks, _ in settled) / len(settled) <= 2.0, seen


def test_a_task_pending_in_the_middle_of_a_tight_bracket_is_looked_at_at_its_top() -> None:
    """Last seen Pending at 0.995 s and Ready at 1.0 s: a look halfway that finds the task
    Pending is followed by one at the bracket's top, not a whole fine step later."""
    timer = PollTimer()
    timer.finished(0.995, 1.0)

    assert timer.wait(0.0, INTERVAL, first=True) == pytest.approx(0.9975)
    assert timer.wait(0.9975, INTERVAL, last=0.9975) == pytest.approx(0.0025)
    assert timer.wait(1.0, INTERVAL, last=1.0) == pytest.approx(timer.fine())  # past it: finely


def test_tasks_whose_durations_vary_widely_are_first_looked_at_the_median_lower_bound() -> None:
    timer = PollTimer()
    for k in range(12):  # 0.5 s and 1.5 s tasks, alternately, each seen within a fine step
        duration = 0.5 if k % 2 else 1.5
        timer.finished(duration - 0.01, duration + 0.01)

    # The brackets overlap: no single due time; looking from the median lower bound wastes no
    # look on the slow half and is late by at most a fine step for it.
    assert timer.wait(0.0, INTERVAL, first=True) == pytest.approx((0.49 + 1.49) / 2)


def test_fine_looks_are_never_closer_than_the_minimum_nor_wider_than_the_interval() -> None:
    quick, slow = PollTimer(), PollTimer()
    quick.finished(0.05, 0.1)
    slow.finished(590.0, 600.0)

    assert quick.fine() == _polling.MIN_FINE
    assert slow.wait(595.0, INTERVAL) == INTERVAL


def test_tasks_ready_at_the_first_look_move_the_estimate_earlier() -> None:
    timer = PollTimer()
    timer.finished(0.9, 1.0)
    first = timer.wait(0.0, INTERVAL, first=True)

    for _ in range(10):  # tasks got faster: every first look finds them Ready
        timer.finished(None, first)

    assert timer.wait(0.0, INTERVAL, first=True) < first


def test_a_look_made_late_by_a_busy_machine_does_not_push_the_estimate_later() -> None:
    timer = PollTimer()
    timer.finished(0.9, 1.0)
    before = timer.wait(0.0, INTERVAL, first=True)

    for _ in range(10):
        timer.finished(None, 5.0)  # the first look came 4 s late (the loop was starved)

    assert timer.wait(0.0, INTERVAL, first=True) <= before


def test_the_first_finished_task_wakes_tasks_sleeping_a_whole_interval() -> None:
    async def scenario() -> bool:
        timer = PollTimer()
        sleeping = asyncio.ensure_future(timer.sleep(3600.0))
        await asyncio.sleep(0)
        timer.finished(0.9, 1.0)
        return await asyncio.wait_for(sleeping, timeout=60)

    assert run(scenario()) is True


def test_a_task_woken_after_it_became_due_looks_at_once_however_old() -> None:
    # The first wave: a task submitted a little before the first one seen Ready was last looked
    # at long before it was due; woken, it must look now, not an interval later because it is
    # already older than any duration seen.
    timer = PollTimer()
    timer.finished(0.5, 1.0)

    assert timer.wait(1.3, INTERVAL, last=0.6) == 0.0
    assert timer.wait(1.3, INTERVAL, last=1.2) == pytest.approx(0.4)  # looked at since: as scheduled
    assert timer.wait(0.98, INTERVAL, last=0.97) == pytest.approx(timer.fine() - 0.01)


def test_a_sleep_that_runs_out_says_it_was_not_woken() -> None:
    assert run(PollTimer().sleep(0.001)) is False


def test_polls_are_bounded_per_second_for_all_tasks_together(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(_polling, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    timer = PollTimer(rate=10)

    burst = [timer.turn() for _ in range(10)]
    owed = [timer.turn() for _ in range(20)]  # asked in the same instant
    now[0] += 5.0  # a quiet spell refills the bucket, but only up to one burst
    after_quiet = [timer.turn() for _ in range(12)]

    assert burst == [0.0] * 10  # a wave of tasks due at once goes out together
    assert owed == pytest.approx([(i + 1) / 10 for i in range(20)])  # then 10 a second, in order
    assert after_quiet[:10] == [0.0] * 10 and after_quiet[10] > 0


def test_the_poll_rate_must_be_at_least_one_poll_a_second() -> None:
    with pytest.raises(UsageError, match="FLEXFORGE_POLL_RATE"):
        HttpSettings(poll_rate=0)
    assert HttpSettings.from_env({"FLEXFORGE_POLL_RATE": "7"}).poll_rate == 7


def test_tasks_after_the_first_are_polled_a_few_times_not_every_interval(
    emulator_factory: EmulatorFactory,
) -> None:
    # Each task takes 0.2 s; polled every 10 ms that is ~20 looks a task. Learnt, a handful.
    emu = emulator_factory(latency=0.2)
    provider = bfl(emu, poll_interval=0.01, poll_max_interval=0.05)

    async def build() -> list[int]:
        looks = []
        try:
            for i in range(8):
                before = emu.stats()["polls"]
                await provider.generate(image_request(seed=i), RecordingTask())
                looks.append(emu.stats()["polls"] - before)
        finally:
            await provider.aclose()
        return looks

    looks = run(build())

    assert sum(looks[3:]) / len(looks[3:]) <= 6, looks
    assert min(looks) >= 1


def test_with_the_last_builds_duration_the_first_task_is_looked_at_just_before_it() -> None:
    timer = PollTimer(prior=1.0)
    fine = timer.fine(1.0)

    assert timer.wait(0.0, INTERVAL, first=True) == pytest.approx(1.0 - fine)  # no random sampling
    assert timer.wait(0.995, INTERVAL, last=1.0 - fine) == pytest.approx(fine - 0.005)  # then finely
    assert timer.wait(1.3, INTERVAL, last=1.29) == pytest.approx(INTERVAL - 0.01)  # a wrong prior: back off
    timer.finished(1.9, 2.0)  # this build's own tasks take over at once
    assert timer.wait(0.0, INTERVAL, first=True) == pytest.approx(1.95)


def test_learnt_durations_are_kept_per_provider_and_a_garbled_file_is_ignored(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    assert _polling.load_prior(folder, "bfl") is None
    _polling.save_prior(folder, "bfl", 12.5)
    _polling.save_prior(folder, "emulator", 1.0)

    assert _polling.load_prior(folder, "bfl") == 12.5
    assert _polling.load_prior(folder, "emulator") == 1.0
    for garbage in ('{"bfl": "soon"}', '{"bfl": -1}', '{"bfl": 1e999}', "[1]", "\xff"):
        (tmp_path / "cache" / _polling.PRIOR_FILE).write_text(garbage)
        assert _polling.load_prior(folder, "bfl") is None, garbage


def test_a_build_leaves_its_task_duration_for_the_next_one(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(latency=0.2)
    first = bfl(emu, poll_interval=0.05)
    assert first.polls.prior is None

    async def one(provider: object) -> None:
        try:
            await provider.generate(image_request(seed=1), RecordingTask())  # type: ignore[attr-defined]
        finally:
            await provider.aclose()  # type: ignore[attr-defined]

    run(one(first))
    second = bfl(emu, poll_interval=0.05)

    assert second.polls.prior is not None and 0.15 <= second.polls.prior <= 1.0
    run(one(second))


def test_a_ready_tasks_download_waits_for_the_submission_that_took_its_place(
    emulator_factory: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The place a Ready task frees goes to the next submission, which starts the next stretch
    of the makespan: the image's download waits until that submission is answered (a wave of
    downloads made the submissions beside it several times slower), and only that long."""
    from flexforge.providers.bfl import BflProvider
    from tests.support.emulator import FAST, SECRET

    emu = emulator_factory(latency=0.05)
    provider = BflProvider(emu.url, SECRET, emulated=True, max_in_flight=1, settings=FAST)
    events: list[tuple[str, str, str]] = []
    real = provider.call

    async def call(method: str, url: str, *, phase: str, **kwargs: Any) -> Any:
        submits = sum(1 for e in events if e[:2] == ("submit", "start"))
        events.append((phase, "start", str(submits)))
        if phase == "submit" and submits == 1:
            await asyncio.sleep(0.2)  # the second task's submission is slow to answer
        response = await real(method, url, phase=phase, **kwargs)  # type: ignore[arg-type]
        events.append((phase, "end", str(submits)))
        return response

    monkeypatch.setattr(provider, "call", call)

    async def both() -> None:
        try:
            await asyncio.gather(
                provider.generate(image_request(asset_id="a"), RecordingTask()),
                provider.generate(image_request(asset_id="b"), RecordingTask()),
            )
        finally:
            await provider.aclose()

    asyncio.run(both())
    steps = [e[:2] for e in events]
    second_submit_end = steps.index(("submit", "end"), steps.index(("submit", "end")) + 1)
    first_download = steps.index(("download", "start"))
    assert first_download > second_submit_end, events
