"""References: the combined limit per model, and reference_max_mp scaling them down before upload."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from flexforge.emulator.testing import RunningEmulator
from flexforge.imaging import downscale, fit_megapixels
from tests.helpers import Project, png
from tests.support.emulator import serve_builds


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve_builds(monkeypatch) as emulator:
        yield emulator


def uploaded_sizes(emu: RunningEmulator) -> list[tuple[int, int]]:
    sizes = []
    for record in emu.requests():
        body = record["body"]
        assert isinstance(body, dict)
        for field in ("input_image", "input_image_2", "input_image_3"):
            if field in body:
                with Image.open(io.BytesIO(base64.b64decode(body[field]))) as img:
                    sizes.append(img.size)
    return sizes


def test_fit_megapixels_keeps_the_aspect_and_stays_under_the_limit() -> None:
    assert fit_megapixels(1600, 1200, 0.5) == (816, 612)
    assert fit_megapixels(640, 480, 0.5) == (640, 480)  # already fits: unchanged
    for w, h, mp in [(4000, 3000, 1.0), (5000, 20, 0.01), (333, 777, 0.1)]:
        fw, fh = fit_megapixels(w, h, mp)
        assert fw * fh <= mp * 1e6 and abs(fw / fh - w / h) / (w / h) < 0.06


def test_downscaling_is_deterministic() -> None:
    buffer = io.BytesIO()
    Image.effect_mandelbrot((1200, 900), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(buffer, "PNG")
    first, second = downscale(buffer.getvalue(), 0.25), downscale(buffer.getvalue(), 0.25)
    assert first is not None and first == second
    assert downscale(buffer.getvalue(), 2.0) is None


def test_references_are_scaled_down_before_upload_and_the_limit_is_in_the_key(
    project: Project, emu: RunningEmulator
) -> None:
    png(project.root / "ref/big.png", (1600, 1200))
    png(project.root / "ref/small.png", (320, 240))
    project.manifest("""
        version: 1
        defaults: {width: 256, height: 256, reference_max_mp: 0.5}
        assets:
          edit: {prompt: "image 1 and image 2", seed: 1, references: [ref/big.png, ref/small.png]}
    """)

    result = project.run("build", "--provider", "emulator")

    assert result.exit_code == 0, result.stderr
    assert uploaded_sizes(emu) == [(816, 612), (320, 240)]
    assert project.run("plan", "--json", "--provider", "emulator").json()["assets"][0]["action"] == "none"
    project.edit("reference_max_mp: 0.5", "reference_max_mp: 0.25")
    planned = project.run("plan", "--json", "--provider", "emulator").json()["assets"][0]
    assert (planned["action"], planned["reasons"]) == ("regenerate", ["params"])


def test_pro_takes_at_most_nine_megapixels_of_references_together(project: Project) -> None:
    for i in range(3):
        png(project.root / f"ref/r{i}.png", (2000, 1700), (i * 60, 0, 0))
    project.manifest("""
        version: 1
        assets:
          pro: {model: flux-2-pro, prompt: x, references: [ref/r0.png, ref/r1.png, ref/r2.png]}
          flex: {prompt: x, references: [ref/r0.png, ref/r1.png, ref/r2.png]}
    """)

    result = project.run("validate")

    assert result.exit_code == 1
    assert (
        "flexforge.yaml:3:51: assets.pro.references: flux-2-pro takes at most 9 MP of references "
        "together, these are 10.20 MP; use fewer or smaller ones, or set reference_max_mp"
    ) in result.stderr
    assert "assets.flex" not in result.stderr  # no combined limit is documented for flex
    project.edit("pro: {model: flux-2-pro,", "pro: {model: flux-2-pro, reference_max_mp: 2,")
    assert project.run("validate").exit_code == 0


def test_reference_max_mp_is_a_positive_number_of_at_most_20(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, reference_max_mp: 0}
          b: {prompt: x, reference_max_mp: 25}
    """)

    result = project.run("validate")

    assert "assets.a.reference_max_mp: 0 is less than or equal to the minimum of 0" in result.stderr
    assert "assets.b.reference_max_mp: 25 is greater than the maximum of 20" in result.stderr
