"""Thumbnails, perceptual hashes and heatmaps, cached by the source's digest."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from flexforge.thumbs import MAX_PIXELS, DerivedImageError, Thumbs, distance


def picture(size: tuple[int, int] = (800, 600), shift: int = 0, fmt: str = "PNG") -> bytes:
    img = Image.new("RGB", size, (240, 240, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((100 + shift, 100, 400 + shift, 400), fill=(20, 40, 160))
    draw.ellipse((450, 150, 700, 500), fill=(200, 60, 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_thumbnail_is_made_once_per_digest(tmp_path: Path) -> None:
    thumbs = Thumbs(tmp_path / "thumbs")
    data = picture()
    calls: list[int] = []

    def load() -> bytes:
        calls.append(1)
        return data

    path = thumbs.thumbnail(sha(data), load)
    with Image.open(path) as img:
        assert img.format == "WEBP" and max(img.size) == 320 and img.size == (320, 240)
    assert thumbs.thumbnail(sha(data), load) == path
    assert (thumbs.made, thumbs.reused, len(calls)) == (1, 1, 1)
    assert thumbs.phash(sha(data), load) and len(calls) == 1  # hashed in the same decode


def test_distance_is_small_for_a_nudge_and_large_for_another_picture(tmp_path: Path) -> None:
    thumbs = Thumbs(tmp_path)
    a, nudged, jpeg = picture(), picture(shift=8), picture(fmt="JPEG")
    other = picture(size=(800, 600), shift=300)
    h = {
        name: thumbs.phash(sha(d), lambda d=d: d)
        for name, d in {"a": a, "n": nudged, "j": jpeg, "o": other}.items()
    }
    assert distance(h["a"], h["a"]) == 0
    assert distance(h["a"], h["j"]) <= 4  # same picture, other encoding
    assert distance(h["a"], h["n"]) < distance(h["a"], h["o"])


def test_heatmap_lights_up_where_pixels_changed(tmp_path: Path) -> None:
    thumbs = Thumbs(tmp_path)
    a, b = picture(), picture(shift=200)
    path = thumbs.heatmap(sha(a), sha(b), lambda: a, lambda: b)
    with Image.open(path) as heat:
        rgb = heat.convert("RGB")
        w, h = rgb.size
        changed = rgb.getpixel((int(w * 0.2), int(h * 0.4)))  # inside the moved rectangle
        still = rgb.getpixel((int(w * 0.75), int(h * 0.9)))  # background, untouched
    assert sum(changed) > 3 * sum(still)
    assert thumbs.heatmap(sha(a), sha(b), lambda: a, lambda: b) == path and thumbs.reused == 1


def test_unreadable_bytes_and_bombs_are_refused(tmp_path: Path) -> None:
    thumbs = Thumbs(tmp_path)
    with pytest.raises(DerivedImageError):
        thumbs.thumbnail("0" * 64, lambda: b"not an image")
    # A PNG header declaring more pixels than allowed is refused before decoding.
    side = int(MAX_PIXELS**0.5) + 100
    bomb = io.BytesIO()
    Image.new("1", (side, side)).save(bomb, format="PNG")
    with pytest.raises(DerivedImageError, match="too many pixels"):
        thumbs.thumbnail("1" * 64, bomb.getvalue)
