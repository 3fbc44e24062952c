"""The API's answers and the journal are untrusted: a key goes only to its API's hosts, its
numbers count only when sane, and its bodies are read with a bound in size and time.

The attacker's host is a second loopback server that records every request it gets; the test
reaches it as `localhost`, another host than the API's `127.0.0.1`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from flexforge.emulator.testing import RunningEmulator
from flexforge.errors import ProviderError
from flexforge.imaging import verify_image
from flexforge.providers import JournalEntry
from flexforge.providers._http import MAX_ANSWER_BYTES, MAX_IMAGE_BYTES
from flexforge.providers.bfl import BflProvider
from tests.support.emulator import FAST, SECRET, RecordingTask, bfl, generate, image_request
from tests.support.hostile import (
    LoopbackServer,
    endless,
    flux_api,
    json_answer,
    png_bytes,
    png_declaring,
    redirect_to,
    serving,
    spy_on_decodes,
    trickle,
)


@pytest.fixture
def attacker() -> Iterator[LoopbackServer]:
    """Another host, answering anything with an image, recording all it receives."""
    with serving({"*": lambda handler: handler.send_bytes(png_bytes(128, 96), "image/png")}) as server:
        yield server


@pytest.fixture
def api() -> Iterator[LoopbackServer]:
    """A scriptable FLUX.2 API on 127.0.0.1; tests change its routes."""
    with serving() as server:
        server.routes.update(flux_api(server.url))
        yield server


def provider(api: LoopbackServer, **settings: Any) -> BflProvider:
    return BflProvider(api.url(), SECRET, settings=replace(FAST, **settings))


def journal(task_id: str, polling_url: str, cost_credits: Any = None) -> JournalEntry:
    return JournalEntry("hero", "k" * 64, "bfl", task_id, polling_url, time.time(), cost_credits)


def fail(api: LoopbackServer, task: RecordingTask | None = None, **settings: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        generate(provider(api, **settings), image_request(), task)
    assert SECRET not in str(info.value)
    return info.value


def keyed(server: LoopbackServer) -> list[str]:
    """The paths of requests that carried the key, in any header or in the URL."""
    return [seen.path for seen in server.received if SECRET in seen.text()]


# --- a key goes only to its API's hosts ----------------------------------------------------------


def test_a_journaled_polling_url_on_another_host_gets_no_request_and_the_asset_is_made_afresh(
    emulator: RunningEmulator, attacker: LoopbackServer
) -> None:
    stolen = attacker.url("/v1/get_result?id=old-task", host="localhost")
    task = RecordingTask(resumable=journal("old-task", stolen))

    image = generate(bfl(emulator), image_request(), task)

    assert attacker.received == []
    verify_image(image.data, 128, 96, "png")
    assert emulator.stats()["submissions"] == 1
    assert any("old-task" in line and "dropped" in line and "localhost" in line for line in task.logs)
    assert task.finished >= 1  # the engine drops the entry


@pytest.mark.parametrize(
    "where",
    ["another-host", "plain-http-under-bfl-domain", "user-info-before-the-host", "https-elsewhere"],
)
def test_a_submit_answer_naming_a_polling_url_elsewhere_fails_the_asset_and_sends_nothing_there(
    api: LoopbackServer, attacker: LoopbackServer, where: str
) -> None:
    polling_url = {
        "another-host": attacker.url("/poll?id=task-1", host="localhost"),
        "plain-http-under-bfl-domain": "http://api.eu2.bfl.ai/v1/get_result?id=task-1",
        "user-info-before-the-host": f"http://127.0.0.1@localhost:{attacker.server_port}/poll?id=task-1",
        "https-elsewhere": f"https://localhost:{attacker.server_port}/poll?id=task-1",
    }[where]
    api.routes["/v1/flux-2-flex"] = json_answer({"id": "task-1", "polling_url": polling_url, "cost": 5})
    task = RecordingTask()

    error = fail(api, task)

    assert attacker.received == []
    assert "task-1" in str(error) and "refused" in str(error) and "charged" in str(error)
    assert task.submissions == []  # never journaled: no later build polls it either
    assert [seen.path for seen in api.received] == ["/v1/flux-2-flex"]


def test_a_polling_url_holding_the_key_is_never_requested_nor_journaled(api: LoopbackServer) -> None:
    leaky = api.url(f"/poll?id=task-1&echo={SECRET}")
    api.routes["/v1/flux-2-flex"] = json_answer({"id": "task-1", "polling_url": leaky})
    task = RecordingTask()

    error = fail(api, task)

    assert "contains the API key" in str(error)
    assert task.submissions == [] and all(SECRET not in line for line in task.logs)
    assert [seen.path for seen in api.received] == ["/v1/flux-2-flex"]


def test_a_journaled_polling_url_holding_the_key_is_dropped_unrequested(emulator: RunningEmulator) -> None:
    leaky = f"{emulator.url}/cluster-eu2/v1/get_result?id=old&k={SECRET}"
    task = RecordingTask(resumable=journal("old", leaky))

    generate(bfl(emulator), image_request(), task)

    assert emulator.stats()["polls"] >= 1 and emulator.stats()["submissions"] == 1
    assert all(SECRET not in line for line in task.logs)
    assert all(SECRET not in url for _, url, _ in task.submissions)
    assert any("dropped" in line and "contains the API key" in line for line in task.logs)


def test_the_image_download_never_carries_the_key_wherever_it_is(
    api: LoopbackServer, attacker: LoopbackServer
) -> None:
    api.routes.update(flux_api(api.url, sample=attacker.url("/delivery/x.png?sig=1", host="localhost")))

    image = generate(provider(api), image_request())

    verify_image(image.data, 128, 96, "png")
    assert [seen.path for seen in attacker.received] == ["/delivery/x.png?sig=1"]
    assert keyed(attacker) == []
    assert keyed(api) == ["/v1/flux-2-flex", "/poll?id=task-1"]  # the key does go to the API


def test_a_download_url_holding_the_key_is_never_requested(
    api: LoopbackServer, attacker: LoopbackServer
) -> None:
    api.routes.update(flux_api(api.url, sample=attacker.url(f"/x.png?token={SECRET}", host="localhost")))
    task = RecordingTask()

    error = fail(api, task)

    assert "download URL of task task-1 contains the API key" in str(error)
    assert attacker.received == []
    assert task.finished == 1  # dropped: every later build would meet the same URL


def test_a_download_redirected_to_another_host_does_not_carry_the_key_there(
    api: LoopbackServer, attacker: LoopbackServer
) -> None:
    api.routes.update(flux_api(api.url, sample=api.url("/hop")))
    api.routes["/hop"] = redirect_to(attacker.url("/stored.png", host="localhost"))

    generate(provider(api), image_request())

    assert [seen.path for seen in attacker.received] == ["/stored.png"]
    assert keyed(attacker) == []


def test_a_poll_answered_with_a_redirect_elsewhere_is_not_followed(
    api: LoopbackServer, attacker: LoopbackServer
) -> None:
    api.routes["/poll"] = redirect_to(attacker.url("/poll", host="localhost"))

    error = fail(api)

    assert "307" in str(error)
    assert attacker.received == []


# --- a journaled task refused as unauthorised (the key changed) ----------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_journaled_task_refused_as_unauthorised_is_dropped_with_a_warning_and_made_anew(
    api: LoopbackServer, status: int
) -> None:
    api.routes["/old-poll"] = json_answer({"detail": "Not authenticated"}, status)
    task = RecordingTask(resumable=journal("old-task", api.url("/old-poll?id=old-task")))

    image = generate(provider(api), image_request(), task)

    verify_image(image.data, 128, 96, "png")
    assert image.task_id == "task-1"
    assert [seen.path for seen in api.received][:2] == ["/old-poll?id=old-task", "/v1/flux-2-flex"]
    assert task.submissions[0][0] == "task-1"
    (warning,) = [line for line in task.logs if line.startswith("warning")]
    assert "old-task" in warning and str(status) in warning and "dropped" in warning


def test_a_fresh_task_refused_as_unauthorised_is_still_a_fatal_bad_key(api: LoopbackServer) -> None:
    api.routes["/poll"] = json_answer({"detail": "Not authenticated"}, 403)

    error = fail(api)

    assert error.fatal and "BFL_API_KEY" in str(error)


# --- untrusted numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cost",
    ["NaN", math.nan, math.inf, -5, -0.01, 1e300, 10**400, True, "5", [5], {"credits": 5}],
    ids=[
        "NaN-text",
        "NaN",
        "Infinity",
        "negative",
        "below-0",
        "huge",
        "beyond-float",
        "bool",
        "text",
        "list",
        "dict",
    ],
)
def test_an_insane_api_cost_never_counts_and_is_warned_about(api: LoopbackServer, cost: Any) -> None:
    api.routes["/v1/flux-2-flex"] = json_answer(
        {"id": "task-1", "polling_url": api.url("/poll?id=task-1"), "cost": cost}
    )
    task = RecordingTask()

    image = generate(provider(api), image_request(), task)

    assert image.cost_credits is None  # so the engine counts the estimate
    assert task.submissions == [("task-1", api.url("/poll?id=task-1"), None)]
    assert any(line.startswith("warning") and "the estimate counts" in line for line in task.logs)


@pytest.mark.parametrize("cost", [0, 5.25, None], ids=["zero", "credits", "absent"])
def test_a_sane_api_cost_counts_without_a_warning(api: LoopbackServer, cost: float | None) -> None:
    api.routes["/v1/flux-2-flex"] = json_answer(
        {"id": "task-1", "polling_url": api.url("/poll?id=task-1"), "cost": cost}
    )
    task = RecordingTask()

    image = generate(provider(api), image_request(), task)

    assert image.cost_credits == cost
    assert not any(line.startswith("warning") for line in task.logs)


def test_an_insane_cost_in_a_journal_entry_never_counts(emulator: RunningEmulator) -> None:
    emu_task = RecordingTask()
    generate(bfl(emulator), image_request(), emu_task)  # a task that exists, to resume
    ((task_id, polling_url, _),) = emu_task.submissions
    task = RecordingTask(resumable=journal(task_id, polling_url, cost_credits=-1e9))

    image = generate(bfl(emulator), image_request(), task)

    assert image.task_id == task_id and image.cost_credits is None
    assert any("journal entry" in line and "the estimate counts" in line for line in task.logs)


@pytest.mark.parametrize("seed", ["42", -1, 2**70, 1.5, True])
def test_an_insane_result_seed_is_not_reported(api: LoopbackServer, seed: Any) -> None:
    result = {"sample": api.url("/image"), "seed": seed}
    api.routes["/poll"] = json_answer({"id": "task-1", "status": "Ready", "result": result})

    assert generate(provider(api), image_request()).seed is None


# --- bounded answers --------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [400 * 2**20, None], ids=["content-length", "no-content-length"])
def test_an_image_larger_than_the_cap_is_refused_unread_and_kept_for_the_next_build(
    api: LoopbackServer, declared: int | None
) -> None:
    api.routes["/image"] = endless(declared=declared)
    task = RecordingTask()

    error = fail(api, task)

    assert f"larger than {MAX_IMAGE_BYTES // 2**20} MiB" in str(error)
    assert "declares" in str(error) if declared else "arrived" in str(error)
    assert task.finished == 0  # still journaled: the next build fetches it without paying
    assert [seen.path for seen in api.received].count("/image") == 1  # not retried


def test_a_trickled_image_fails_at_the_download_deadline(api: LoopbackServer) -> None:
    api.routes["/image"] = trickle(png_bytes(128, 96), pause=0.05)

    # Every byte comes well within the 10 s read timeout; the whole would take many seconds.
    error = fail(api, download_timeout=0.3, max_retries=1)

    assert "no complete answer within 0.3s" in str(error) and "download" in str(error)


def test_a_huge_poll_answer_is_refused_unread(api: LoopbackServer) -> None:
    api.routes["/poll"] = endless(declared=None)

    error = fail(api)

    assert f"poll answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB" in str(error)


def test_a_huge_submit_answer_is_refused_and_may_have_been_charged(api: LoopbackServer) -> None:
    api.routes["/v1/flux-2-flex"] = endless(declared=10 * MAX_ANSWER_BYTES)

    error = fail(api)

    assert "submit answer is larger than" in str(error) and "charged" in str(error)


def test_a_trickled_submit_answer_fails_at_the_deadline_after_the_upload(api: LoopbackServer) -> None:
    answer = b'{"id": "task-1", "polling_url": "' + api.url("/poll?id=task-1").encode() + b'"}'
    api.routes["/v1/flux-2-flex"] = trickle(answer, pause=0.05)

    error = fail(api, http_timeout=0.3, max_retries=0)

    assert "no complete answer within 0.3s" in str(error) and "charged" in str(error)


def test_a_trickled_poll_answer_fails_at_the_call_deadline(api: LoopbackServer) -> None:
    answer = b'{"id": "task-1", "status": "Pending", "padding": "' + b"x" * 200 + b'"}'
    api.routes["/poll"] = trickle(answer, pause=0.05)

    error = fail(api, http_timeout=0.3, max_retries=1)

    assert "no complete answer within 0.3s" in str(error) and "poll" in str(error)


def test_an_image_declaring_a_huge_size_is_refused_before_any_decode(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = png_declaring(8000, 8000)
    api.routes["/image"] = lambda handler: handler.send_bytes(bomb, "image/png")
    decoded = spy_on_decodes(monkeypatch)

    error = fail(api, max_retries=0)

    assert "expected 128x96, got 8000x8000" in str(error)
    assert decoded == []
