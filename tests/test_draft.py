"""The draft renderer and provider: deterministic bytes, the requested size and format, and a
preview that really shows the headline, palette, subjects and references it was asked for."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from flexforge.draft import Typeface, render
from flexforge.imaging import PIL_FORMATS, verify_image
from flexforge.providers import JournalEntry, Provider, load_provider
from flexforge.providers.draft import DraftProvider
from flexforge.request import ImageRequest, ReferenceInput

REPO = Path(__file__).resolve().parents[1]
POSTER = "A poster for Northwind coffee with the headline 'Brew bold' in bold sans-serif"
SHELF: dict[str, Any] = {
    "scene": "Coffee bags on a wooden shelf",
    "subjects": [
        {"description": "kraft coffee bag with 'Northwind' label", "position": "center"},
        {"description": "ceramic mug", "position": "left", "action": "steaming"},
    ],
    "style": "product photography",
    "color_palette": ["#3B2A1A", "#E8D5B7", "#1F7A8C"],
    "mood": "warm",
}


def make_request(
    prompt: str = POSTER,
    *,
    width: int = 768,
    height: int = 432,
    seed: int = 42,
    output_format: str = "png",
    references: tuple[ReferenceInput, ...] = (),
    structured: Mapping[str, Any] | None = None,
) -> ImageRequest:
    return ImageRequest(
        asset_id="hero",
        model="flux-2-flex",
        prompt=prompt,
        width=width,
        height=height,
        seed=seed,
        output_format=output_format,
        safety_tolerance=2,
        steps=50,
        guidance=4.5,
        prompt_upsampling=False,
        references=references,
        structured=structured,
    )


def shelf_request(**kwargs: Any) -> ImageRequest:
    return make_request(json.dumps(SHELF), structured=SHELF, width=1080, height=1080, **kwargs)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def reference(path: Path) -> ReferenceInput:
    return ReferenceInput(label=path.name, path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def solid_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def colour_counts(image: Image.Image) -> Counter[tuple[int, int, int]]:
    colours = image.convert("RGB").getcolors(maxcolors=image.width * image.height)
    assert colours is not None
    return Counter({(c[0], c[1], c[2]): n for n, c in colours if isinstance(c, tuple)})


def exact_mask(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """A mode-L mask: 255 where `image` is exactly `colour`."""
    r, g, b = ImageChops.difference(image, Image.new("RGB", image.size, colour)).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 if v == 0 else 0)


def near_mask(image: Image.Image, colour: tuple[int, int, int], tolerance: int) -> Image.Image:
    r, g, b = ImageChops.difference(image, Image.new("RGB", image.size, colour)).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 if v <= tolerance else 0)


def centre(mask: Image.Image) -> tuple[float, float]:
    bbox = mask.getbbox()
    assert bbox is not None, "nothing matched"
    return (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2


def wcag_contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    def luminance(c: tuple[int, int, int]) -> float:
        def channel(v: int) -> float:
            s = v / 255
            return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

        return 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2])

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def changed_fraction(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 8 else 0)
    return sum(diff.histogram()[255:]) / (a.width * a.height)


# --- determinism -------------------------------------------------------------------------------


def test_same_request_gives_identical_bytes(tmp_path: Path) -> None:
    red = reference(solid_png(tmp_path / "red.png", (255, 0, 0)))
    for req in (make_request(), shelf_request(references=(red,))):
        assert render(req) == render(req)


_CHILD = """
import hashlib, json, sys
from pathlib import Path
from flexforge.draft import render
from flexforge.request import ImageRequest, ReferenceInput
spec, ref = json.loads(sys.argv[1]), Path(sys.argv[2])
refs = (ReferenceInput(ref.name, ref, "-"),)
requests = [
    ImageRequest("a", "flux-2-flex", {poster!r}, 768, 432, 42, "png", 2),
    ImageRequest("b", "flux-2-pro", json.dumps(spec), 640, 640, 7, "webp", 2, structured=spec),
    ImageRequest("c", "flux-2-flex", "Same as image 1", 512, 768, 3, "jpeg", 2, references=refs),
]
print(" ".join(hashlib.sha256(render(r)).hexdigest() for r in requests))
"""


def test_bytes_are_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    ref = solid_png(tmp_path / "red.png", (255, 0, 0))
    script = _CHILD.format(poster=POSTER)
    digests = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [sys.executable, "-c", script, json.dumps(SHELF), str(ref)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1
    (line,) = digests
    assert len(set(line.split())) == 3  # three different requests, three different images


def test_different_seeds_give_visibly_different_images() -> None:
    images = {seed: render(make_request(seed=seed)) for seed in range(1, 7)}
    assert len(set(images.values())) == len(images)
    first = decode(images[1])
    for seed in range(2, 7):
        assert changed_fraction(first, decode(images[seed])) > 0.2, seed


# --- size and format ---------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("size", [(1536, 864), (64, 64), (2048, 64), (64, 2048), (1088, 1920)])
def test_exact_size_and_format(output_format: str, size: tuple[int, int], tmp_path: Path) -> None:
    red = reference(solid_png(tmp_path / "red.png", (255, 0, 0)))
    structured = {**SHELF, "scene": "A very long scene description " * 40}
    req = make_request(
        json.dumps(structured),
        structured=structured,
        width=size[0],
        height=size[1],
        output_format=output_format,
        references=(red, red),
    )
    data = render(req)
    verify_image(data, size[0], size[1], output_format)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == PIL_FORMATS[output_format]
        assert image.size == size
        assert "exif" not in image.info


def test_unknown_output_format_is_refused() -> None:
    with pytest.raises(ValueError, match="tiff"):
        render(make_request(output_format="tiff"))


# --- what the preview shows --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(1, 7))  # covers every headline style
def test_quoted_headline_is_drawn_large_and_legible_at_the_top(seed: int) -> None:
    quoted = decode(render(make_request(POSTER, seed=seed)))
    plain = decode(render(make_request(POSTER.replace("'", ""), seed=seed)))
    box = (0, 0, quoted.width, round(quoted.height * 0.35))
    top_quoted, top_plain = quoted.crop(box), plain.crop(box)
    assert changed_fraction(top_quoted, top_plain) > 0.1

    # The changed pixels are the headline's plate and its ink: the two most common colours.
    changed = ImageChops.difference(top_quoted, top_plain).convert("L").point(lambda v: 255 if v else 0)
    sentinel = (1, 2, 3)
    only_changed = Image.composite(top_quoted, Image.new("RGB", top_quoted.size, sentinel), changed)
    colours = colour_counts(only_changed)
    del colours[sentinel]
    (plate, _), (ink, ink_count) = colours.most_common(2)
    assert wcag_contrast(plate, ink) >= 4.5, (plate, ink)
    # Large type: the ink spans a good part of the canvas height, not a caption line.
    bbox = exact_mask(top_quoted, ink).getbbox()
    assert bbox is not None
    assert bbox[3] - bbox[1] >= quoted.height * 0.06
    assert ink_count >= 500


def test_apostrophes_are_not_quotations() -> None:
    # Only the bottom caption may differ: neither prompt has a quotation to set as a headline.
    with_apostrophes = decode(render(make_request("the baker's bread, don't miss the teachers' lounge")))
    without = decode(render(make_request("the bakers bread, dont miss the teachers lounge")))
    box = (0, 0, with_apostrophes.width, with_apostrophes.height // 2)
    assert ImageChops.difference(with_apostrophes.crop(box), without.crop(box)).getbbox() is None


@pytest.mark.parametrize("quote", ["'{}'", '"{}"', "\u201c{}\u201d", "\u2018{}\u2019", "\u00ab{}\u00bb"])
def test_every_quote_style_makes_a_headline(quote: str) -> None:
    quoted = decode(render(make_request("A sign saying " + quote.format("Open late"))))
    plain = decode(render(make_request("A sign saying Open late")))
    box = (0, 0, quoted.width, round(quoted.height * 0.35))
    assert changed_fraction(quoted.crop(box), plain.crop(box)) > 0.1


def test_structured_palette_colours_are_painted() -> None:
    image = decode(render(shelf_request()))
    counts = colour_counts(image)
    for hex_colour in SHELF["color_palette"]:
        rgb = (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))
        assert counts[rgb] >= 500, hex_colour


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_structured_palette_colours_the_background(seed: int) -> None:
    reds = {"scene": "A wall", "color_palette": ["#8B0000", "#FF6347", "#FFA07A"]}
    blues = {"scene": "A wall", "color_palette": ["#00008B", "#4169E1", "#87CEFA"]}
    means = {}
    for name, spec in (("reds", reds), ("blues", blues)):
        image = decode(render(make_request(json.dumps(spec), structured=spec, seed=seed)))
        r, _, b = ImageStat.Stat(image.crop((0, 0, image.width, image.height // 2))).mean
        means[name] = r - b
    assert means["reds"] > 40 and means["blues"] < -40, means


def test_structured_subjects_are_blocks_at_their_positions() -> None:
    spec = {"scene": "A table", "color_palette": ["#101010", "#D03030", "#30D030"]}
    left = {**spec, "subjects": [{"description": "a vase", "position": "left"}]}
    right = {**spec, "subjects": [{"description": "a vase", "position": "right"}]}
    for seed in (1, 2, 3):
        images = {
            name: decode(render(make_request(json.dumps(s), structured=s, width=900, height=600, seed=seed)))
            for name, s in (("left", left), ("right", right))
        }
        # The block is filled with a palette colour; where it lands follows the position word.
        # (Only above the caption: the palette chips there carry the same colours.)
        centres = {}
        for name, image in images.items():
            above_caption = image.crop((0, 0, image.width, image.height * 2 // 3))
            counts = colour_counts(above_caption)
            fill = max(((0xD0, 0x30, 0x30), (0x30, 0xD0, 0x30)), key=lambda c: counts[c])
            centres[name] = centre(exact_mask(above_caption, fill))[0]
        assert centres["left"] < 900 / 3 < 2 * 900 / 3 < centres["right"], (seed, centres)


def test_json_prompt_alone_renders_like_the_structured_mapping() -> None:
    # The emulator only sees the JSON text the API carries.
    assert render(make_request(json.dumps(SHELF))) == render(
        make_request(json.dumps(SHELF), structured=SHELF)
    )


def test_reference_is_shown_as_a_thumbnail(tmp_path: Path) -> None:
    red = reference(solid_png(tmp_path / "red.png", (255, 0, 0)))
    with_ref = colour_counts(decode(render(make_request(references=(red,)))))
    without = colour_counts(decode(render(make_request())))
    area = 768 * 432
    assert with_ref[(255, 0, 0)] > area * 0.03
    assert without[(255, 0, 0)] < area * 0.001


def test_references_keep_their_order_and_huge_jpegs_are_fine(tmp_path: Path) -> None:
    red = reference(solid_png(tmp_path / "red.png", (255, 0, 0)))
    blue_path = tmp_path / "blue.jpg"
    Image.new("RGB", (4000, 3000), (0, 0, 255)).save(blue_path, quality=95)
    image = decode(render(make_request("image 1 next to image 2", references=(reference(blue_path), red))))

    blue_at = centre(near_mask(image, (0, 0, 255), 30))
    red_at = centre(exact_mask(image, (255, 0, 0)))
    assert blue_at < red_at  # image 1 first: left of, or above, image 2


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_an_unreadable_reference_draws_a_placeholder(content: bytes, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(content)
    missing = ReferenceInput("gone.png", tmp_path / "gone.png", "0" * 64)
    req = make_request(references=(reference(broken), missing))
    data = render(req)
    verify_image(data, 768, 432, "png")
    assert decode(data) != decode(render(make_request()))


def test_footer_marks_the_image_as_a_draft() -> None:
    # The footer is a dark bar with light text across the bottom edge.
    image = decode(render(make_request()))
    strip = image.crop((0, image.height - 6, image.width, image.height))
    assert colour_counts(strip).most_common(1)[0][0] == (0, 0, 0)
    other_seed = decode(render(make_request(seed=43)))
    footer_box = (0, image.height - 20, image.width // 2, image.height)
    assert ImageChops.difference(image.crop(footer_box), other_seed.crop(footer_box)).getbbox() is not None


def test_a_very_long_prompt_stays_fast() -> None:
    prompt = "a mountain lake at dawn with mist and 'Welcome' sign " * 500
    started = time.perf_counter()
    verify_image(render(make_request(prompt, width=1536, height=864)), 1536, 864, "png")
    assert time.perf_counter() - started < 2.0


def test_bitmap_fallback_typeface_draws_scaled_text() -> None:
    face = Typeface(freetype=False)
    canvas = Image.new("RGB", (400, 80), (255, 255, 255))
    face.draw(canvas, (4, 4), "Brew \u201cbold\u201d \u2026", 44, (0, 0, 0))
    bbox = ImageChops.invert(canvas).getbbox()
    assert bbox is not None
    assert bbox[3] - bbox[1] >= 22  # scaled up: unscaled, the 11 px bitmap font inks ~7 px
    assert face.width("Brew bold", 44) > face.width("Brew bold", 11) * 3


# --- the provider ------------------------------------------------------------------------------


class RecordingTask:
    """A TaskContext that records what the provider tells it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @property
    def resumable(self) -> JournalEntry | None:
        return None

    def submitted(self, task_id: str, polling_url: str, cost_credits: float | None = None) -> None:
        self.events.append(f"submitted {task_id}")

    def ready(self) -> None:
        pass

    def finished_task(self) -> None:
        self.events.append("finished")

    def maybe_charged(self, reason: str, *, replay: bool) -> bool:
        self.events.append(reason)
        return False

    def log(self, message: str) -> None:
        self.events.append(message)


def test_provider_generates_the_rendered_image() -> None:
    provider: Provider = DraftProvider()
    task = RecordingTask()
    requests = [make_request(seed=seed) for seed in range(4)]

    async def run() -> list[Any]:
        try:
            return list(await asyncio.gather(*(provider.generate(r, task) for r in requests)))
        finally:
            await provider.aclose()

    images = asyncio.run(run())
    for req, image in zip(requests, images, strict=True):
        assert image.data == render(req)
        assert image.task_id is None
        assert image.cost_credits == 0.0
        assert image.seed == req.seed
    assert task.events == []  # nothing is submitted, so nothing is journaled


def test_provider_is_registered_as_draft() -> None:
    provider = load_provider("draft")
    assert isinstance(provider, DraftProvider)
    assert (provider.name, provider.generator) == ("draft", "draft")
    assert provider.max_in_flight >= 2
