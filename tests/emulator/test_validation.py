"""FastAPI-shaped 422s for bodies the API would refuse; silence for fields it would ignore."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from flexforge.emulator.testing import RunningEmulator
from tests.support.emulator import SECRET, http

BODY: dict[str, Any] = {"prompt": "a lighthouse", "width": 128, "height": 128, "seed": 1}


def png(size: tuple[int, int] = (32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(emu: RunningEmulator, body: Any, model: str = "flux-2-flex") -> httpx.Response:
    return http().post(f"{emu.url}/v1/{model}", json=body, headers={"x-key": SECRET})


@pytest.mark.parametrize(
    ("change", "loc", "kind", "msg"),
    [
        ({"steps": 0}, ["body", "steps"], "greater_than_equal", "Input should be greater than or equal to 1"),
        ({"steps": 51}, ["body", "steps"], "less_than_equal", "Input should be less than or equal to 50"),
        ({"steps": "many"}, ["body", "steps"], "int_type", "Input should be a valid integer"),
        ({"guidance": 1.0}, ["body", "guidance"], "greater_than_equal", "greater than or equal to 1.5"),
        ({"guidance": 10.5}, ["body", "guidance"], "less_than_equal", "less than or equal to 10.0"),
        ({"prompt_upsampling": "yes"}, ["body", "prompt_upsampling"], "bool_type", "valid boolean"),
        ({"width": 100}, ["body", "width"], "multiple_of", "Input should be a multiple of 16"),
        ({"height": 32}, ["body", "height"], "greater_than_equal", "greater than or equal to 64"),
        ({"width": 4096, "height": 2048}, ["body"], "value_error", "4 MP"),
        ({"safety_tolerance": 6}, ["body", "safety_tolerance"], "less_than_equal", "less than or equal to 5"),
        ({"output_format": "gif"}, ["body", "output_format"], "enum", "'jpeg', 'png' or 'webp'"),
        ({"prompt": None}, ["body", "prompt"], "missing", "Field required"),
        ({"prompt": 7}, ["body", "prompt"], "string_type", "valid string"),
        ({"input_image": "%%%"}, ["body", "input_image"], "value_error", "base64"),
        (
            {"input_image": base64.b64encode(b"not an image").decode()},
            ["body", "input_image"],
            "value_error",
            "decode",
        ),
    ],
)
def test_invalid_fields_get_fastapi_422(
    emulator: RunningEmulator, change: dict[str, Any], loc: list[str], kind: str, msg: str
) -> None:
    response = post(emulator, {**BODY, **change})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert error["type"] == kind
    assert msg in error["msg"]
    assert emulator.stats()["submissions"] == 0


def test_several_problems_are_reported_together(emulator: RunningEmulator) -> None:
    response = post(emulator, {**BODY, "steps": 99, "guidance": 0, "width": 65})

    locs = [tuple(error["loc"]) for error in response.json()["detail"]]
    assert sorted(locs) == [("body", "guidance"), ("body", "steps"), ("body", "width")]


def test_klein_takes_at_most_four_images(emulator: RunningEmulator) -> None:
    images = {"input_image": png(), **{f"input_image_{i}": png() for i in range(2, 6)}}

    response = post(emulator, {**BODY, **images}, model="flux-2-klein-9b")

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "input_image_5"]
    del images["input_image_5"]
    assert post(emulator, {**BODY, **images}, model="flux-2-klein-9b").status_code == 200


def test_not_json_and_not_an_object(emulator: RunningEmulator) -> None:
    broken = http().post(
        f"{emulator.url}/v1/flux-2-pro",
        content=b"{nope",
        headers={"x-key": SECRET, "content-type": "application/json"},
    )
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    assert post(emulator, [1, 2]).json()["detail"][0]["type"] == "dict_type"


def test_unknown_and_flex_only_fields_elsewhere_are_ignored_but_counted(emulator: RunningEmulator) -> None:
    # The real server ignores them silently; the emulator tells the tests.
    assert post(emulator, {**BODY, "stepz": 20}).status_code == 200
    assert post(emulator, {**BODY, "steps": 99, "guidance": 0}, model="flux-2-pro").status_code == 200

    assert emulator.stats()["ignored_fields"] == {"stepz": 1, "steps": 1, "guidance": 1}


def test_auto_size_follows_the_first_input_image(emulator: RunningEmulator) -> None:
    body = {"prompt": "edit", "input_image": png((200, 120)), "output_format": "png"}
    answer = post(emulator, body, model="flux-2-pro").json()

    assert answer["output_mp"] == pytest.approx(192 * 112 / 1e6, abs=1e-4)
    assert answer["input_mp"] == pytest.approx(200 * 120 / 1e6, abs=1e-4)


@pytest.mark.parametrize("field", ["prompt_upsampling", "disable_pup"])
@pytest.mark.parametrize("model", ["flux-2-klein-4b", "flux-2-klein-9b-preview"])
def test_klein_refuses_either_upsampling_switch(emulator: RunningEmulator, model: str, field: str) -> None:
    response = post(emulator, {**BODY, field: False}, model=model)

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", field], "extra_forbidden")


def test_disable_pup_must_be_a_boolean_on_pro_and_max(emulator: RunningEmulator) -> None:
    for model in ("flux-2-pro", "flux-2-max", "flux-2-pro-preview"):
        response = post(emulator, {**BODY, "disable_pup": "yes"}, model=model)
        assert response.status_code == 422, model
        assert response.json()["detail"][0]["loc"] == ["body", "disable_pup"]
