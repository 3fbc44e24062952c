"""The exact JSON and headers each provider sends: the server ignores misspelt fields silently."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from flexforge.emulator.app import REDACTED
from flexforge.emulator.testing import RunningEmulator
from flexforge.errors import ProviderError
from tests.support.emulator import (
    SECRET,
    EmulatorFactory,
    RecordingTask,
    bfl,
    comet,
    generate,
    image_request,
    reference,
)

PROMPT = "A poster for Northwind coffee with the headline 'Brew bold'"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def only_submission(emu: RunningEmulator) -> dict[str, object]:
    (record,) = emu.requests()
    return record


def test_flex_with_three_references_sends_every_knob_and_the_images_in_order(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    refs = tuple(
        reference(tmp_path, name, color)
        for name, color in [("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))]
    )
    request = image_request(references=refs, steps=28, guidance=3.5, prompt_upsampling=False)

    image = generate(bfl(emulator), request)

    record = only_submission(emulator)
    assert record["method"] == "POST"
    assert record["path"] == "/v1/flux-2-flex"
    assert record["body"] == {
        "prompt": PROMPT,
        "width": 128,
        "height": 96,
        "seed": 42,
        "safety_tolerance": 2,
        "output_format": "png",
        "steps": 28,
        "guidance": 3.5,
        "prompt_upsampling": False,
        "input_image": b64(refs[0].path),
        "input_image_2": b64(refs[1].path),
        "input_image_3": b64(refs[2].path),
    }
    headers = record["headers"]
    assert isinstance(headers, dict)
    # The emulator accepts SECRET only and keeps no key in its log: accepted means it was sent.
    assert record["status"] == 200 and emulator.config.accepted_keys == (SECRET,)
    assert headers["x-key"] == REDACTED and SECRET not in str(record)
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers
    assert image.seed == 42
    assert image.cost_credits is not None and image.cost_credits > 0


def test_flex_knobs_left_unset_are_still_sent_explicitly(emulator: RunningEmulator) -> None:
    # The API's own default for prompt_upsampling is true: never rely on it.
    generate(bfl(emulator), image_request(steps=None, guidance=None, prompt_upsampling=None))

    body = only_submission(emulator)["body"]
    assert isinstance(body, dict)
    assert (body["steps"], body["guidance"], body["prompt_upsampling"]) == (50, 4.5, False)


def test_pro_never_gets_flex_knobs_and_is_told_not_to_rewrite_the_prompt(emulator: RunningEmulator) -> None:
    generate(
        bfl(emulator), image_request(model="flux-2-pro", output_format="jpeg", safety_tolerance=4, seed=7)
    )

    record = only_submission(emulator)
    assert record["path"] == "/v1/flux-2-pro"
    assert record["body"] == {
        "prompt": PROMPT,
        "width": 128,
        "height": 96,
        "seed": 7,
        "safety_tolerance": 4,
        "output_format": "jpeg",
        "disable_pup": True,
    }
    assert emulator.stats()["ignored_fields"] == {}


def test_klein_takes_four_references_and_refuses_a_fifth_before_any_call(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    refs = tuple(reference(tmp_path, f"r{i}", (i * 40, 0, 0)) for i in range(5))

    generate(bfl(emulator), image_request(model="flux-2-klein-4b", output_format="webp", references=refs[:4]))
    record = only_submission(emulator)
    assert record["path"] == "/v1/flux-2-klein-4b"
    assert record["body"] == {
        "prompt": PROMPT,
        "width": 128,
        "height": 96,
        "seed": 42,
        "safety_tolerance": 2,
        "output_format": "webp",
        "input_image": b64(refs[0].path),
        "input_image_2": b64(refs[1].path),
        "input_image_3": b64(refs[2].path),
        "input_image_4": b64(refs[3].path),
    }

    with pytest.raises(ProviderError, match="at most 4 references"):
        generate(bfl(emulator), image_request(model="flux-2-klein-9b", references=refs))
    assert len(emulator.requests()) == 1


def test_a_structured_prompt_goes_as_its_json_text(emulator: RunningEmulator) -> None:
    structured = {
        "scene": "Coffee bags on a wooden shelf",
        "subjects": [{"description": "kraft coffee bag with 'Northwind' label", "position": "center"}],
        "color_palette": ["#3B2A1A", "#E8D5B7"],
    }
    text = json.dumps(structured)
    request = image_request(prompt=text, structured=structured, output_format="webp")

    generate(bfl(emulator), request)

    body = only_submission(emulator)["body"]
    assert isinstance(body, dict)
    assert body["prompt"] == text  # a string, not a nested object
    assert json.loads(body["prompt"]) == structured


def test_cometapi_uses_its_route_and_a_bearer_key(emulator: RunningEmulator) -> None:
    generate(comet(emulator), image_request(model="flux-2-pro"))

    record = only_submission(emulator)
    assert record["path"] == "/flux/v1/flux-2-pro"
    assert record["body"] == {
        "prompt": PROMPT,
        "width": 128,
        "height": 96,
        "seed": 42,
        "safety_tolerance": 2,
        "output_format": "png",
        "disable_pup": True,
    }
    headers = record["headers"]
    assert isinstance(headers, dict)
    assert record["status"] == 200 and emulator.config.accepted_keys == (SECRET,)
    assert headers["authorization"] == REDACTED and SECRET not in str(record)
    assert "x-key" not in headers


def test_polls_follow_the_returned_polling_url_even_on_another_port(
    emulator_factory: EmulatorFactory,
) -> None:
    emu = emulator_factory(poll_port=0)
    task = RecordingTask()

    generate(bfl(emu), image_request(), task)

    ((task_id, polling_url, _),) = task.submissions
    assert polling_url.startswith("http://127.0.0.1:")
    assert not polling_url.startswith(emu.url)  # another port
    assert f"/cluster-eu2/v1/get_result?id={task_id}" in polling_url


# What each model's body carries beyond the common fields, written out by hand from
# ../shared/reference/bfl-api.md rather than derived from flexforge/models.py.
MODEL_FIELDS: dict[tuple[str, bool], dict[str, object]] = {
    ("flux-2-flex", False): {"steps": 28, "guidance": 4.5, "prompt_upsampling": False},
    ("flux-2-flex", True): {"steps": 28, "guidance": 4.5, "prompt_upsampling": True},
    ("flux-2-pro", False): {"disable_pup": True},
    ("flux-2-pro", True): {},
    ("flux-2-max", False): {"disable_pup": True},
    ("flux-2-max", True): {},
    ("flux-2-pro-preview", False): {"disable_pup": True},
    ("flux-2-pro-preview", True): {},
    ("flux-2-klein-4b", False): {},
    ("flux-2-klein-4b", True): {},
    ("flux-2-klein-9b", False): {},
    ("flux-2-klein-9b", True): {},
    ("flux-2-klein-9b-preview", False): {},
    ("flux-2-klein-9b-preview", True): {},
}


@pytest.mark.parametrize(("model", "upsampling"), sorted(MODEL_FIELDS))
def test_every_model_gets_its_exact_body_with_upsampling_on_and_off(
    emulator: RunningEmulator, model: str, upsampling: bool
) -> None:
    request = image_request(model=model, prompt_upsampling=upsampling, steps=28, guidance=4.5)

    image = generate(bfl(emulator), request)

    record = only_submission(emulator)
    assert record["path"] == f"/v1/{model}"
    assert record["status"] == 200
    assert record["body"] == {
        "prompt": PROMPT,
        "width": 128,
        "height": 96,
        "seed": 42,
        "safety_tolerance": 2,
        "output_format": "png",
        **MODEL_FIELDS[model, upsampling],
    }
    assert emulator.stats()["ignored_fields"] == {}
    # The API reports the prompt it followed: rewritten only where upsampling is on and the
    # model has it (klein has no upsampling at all).
    rewritten = upsampling and "klein" not in model
    assert image.prompt is not None
    assert (image.prompt != PROMPT) == rewritten
    assert image.prompt.startswith(PROMPT)


def test_pro_rewrites_the_prompt_when_nothing_says_otherwise(emulator: RunningEmulator) -> None:
    # What flexforge used to send: no disable_pup. The emulator, like the live API, rewrites.
    import time

    import httpx

    answer = httpx.post(
        f"{emulator.url}/v1/flux-2-pro",
        json={"prompt": PROMPT, "width": 128, "height": 96, "output_format": "png"},
        headers={"x-key": SECRET},
    ).json()
    image = generate(bfl(emulator), image_request(model="flux-2-pro"))
    polled = httpx.get(answer["polling_url"], headers={"x-key": SECRET})
    while polled.json()["status"] == "Pending":
        time.sleep(0.01)
        polled = httpx.get(answer["polling_url"], headers={"x-key": SECRET})
    assert polled.json()["result"]["prompt"] != PROMPT
    assert image.prompt == PROMPT  # disable_pup: true kept it
