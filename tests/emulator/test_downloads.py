"""Signed, expiring download URLs, and the images behind them."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from flexforge.emulator.signing import UrlSigner
from flexforge.emulator.testing import RunningEmulator
from flexforge.imaging import verify_image
from tests.support.emulator import SECRET, EmulatorFactory, http

AUTH = {"x-key": SECRET}


def ready_sample(emu: RunningEmulator, body: dict[str, Any], model: str = "flux-2-pro") -> str:
    answer = http().post(f"{emu.url}/v1/{model}", json=body, headers=AUTH).json()
    for _ in range(200):
        result = http().get(answer["polling_url"], headers=AUTH).json()
        if result["status"] == "Ready":
            sample: str = result["result"]["sample"]
            return sample
        time.sleep(0.01)
    raise AssertionError("never ready")


@pytest.mark.parametrize(("fmt", "ext"), [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_images_come_at_the_requested_size_and_format(emulator: RunningEmulator, fmt: str, ext: str) -> None:
    sample = ready_sample(emulator, {"prompt": "a 'sign'", "width": 160, "height": 96, "output_format": fmt})

    assert httpx.URL(sample).path.endswith(f".{ext}")
    response = http().get(sample)  # no key needed
    assert response.status_code == 200
    verify_image(response.content, 160, 96, fmt)


def test_the_same_request_renders_the_same_bytes(emulator: RunningEmulator) -> None:
    body = {"prompt": "a lighthouse", "width": 128, "height": 128, "seed": 9, "output_format": "png"}
    first = http().get(ready_sample(emulator, body)).content
    second = http().get(ready_sample(emulator, body)).content
    assert first == second


def test_references_are_decoded_and_rendered(emulator: RunningEmulator) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 0, 0)).save(buffer, "PNG")
    body = {
        "prompt": "Same poster as image 1",
        "width": 256,
        "height": 256,
        "seed": 1,
        "output_format": "png",
    }
    plain = http().get(ready_sample(emulator, body)).content
    edited = (
        http()
        .get(ready_sample(emulator, {**body, "input_image": base64.b64encode(buffer.getvalue()).decode()}))
        .content
    )

    verify_image(edited, 256, 256, "png")
    assert edited != plain


def test_an_expired_url_is_refused(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(url_lifetime=0.2)
    sample = ready_sample(emu, {"prompt": "x", "width": 64, "height": 64})
    assert http().get(sample).status_code == 200

    time.sleep(0.3)
    expired = http().get(sample)

    assert expired.status_code == 403
    assert "expired" in expired.text


def test_a_tampered_url_is_refused(emulator: RunningEmulator) -> None:
    sample = httpx.URL(ready_sample(emulator, {"prompt": "x", "width": 64, "height": 64}))
    se, sig = sample.params["se"], sample.params["sig"]

    for tampered in (
        sample.copy_set_param("sig", sig[:-1] + ("0" if sig[-1] != "0" else "1")),
        sample.copy_set_param("se", str(float(se) + 3600)),  # a longer life
        sample.copy_with(path=sample.path.rpartition(".")[0] + ".png"),  # the URL says .jpg
        sample.copy_remove_param("sig"),
    ):
        response = http().get(tampered)
        assert response.status_code == 403, tampered
        assert "Signature did not match" in response.text


def test_every_poll_signs_a_fresh_url(emulator: RunningEmulator) -> None:
    answer = http().post(f"{emulator.url}/v1/flux-2-pro", json={"prompt": "x"}, headers=AUTH).json()
    time.sleep(0.1)
    first = http().get(answer["polling_url"], headers=AUTH).json()["result"]["sample"]
    time.sleep(0.01)
    second = http().get(answer["polling_url"], headers=AUTH).json()["result"]["sample"]
    assert first != second


def test_signer_rules() -> None:
    signer = UrlSigner(lifetime=60, secret=b"s")
    query = signer.query("a.png")
    assert signer.check("a.png", query["se"], query["sig"]) is None
    assert signer.check("b.png", query["se"], query["sig"]) == "Signature did not match"
    old = signer.query("a.png", now=time.time() - 120)
    assert signer.check("a.png", old["se"], old["sig"]) == "Signed URL expired"
    assert UrlSigner(60, secret=b"other").check("a.png", query["se"], query["sig"]) is not None


def test_download_faults(emulator_factory: EmulatorFactory) -> None:
    emu = emulator_factory(script=("download:truncate", "download:expired", "download:500", "download:drop"))
    sample = ready_sample(emu, {"prompt": "x", "width": 64, "height": 64, "output_format": "png"})

    truncated = http().get(sample)
    assert truncated.status_code == 200
    with pytest.raises(ValueError):
        verify_image(truncated.content, 64, 64, "png")
    assert http().get(sample).status_code == 403
    assert http().get(sample).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):
        http().get(sample)
    verify_image(http().get(sample).content, 64, 64, "png")
