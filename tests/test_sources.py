"""sources.declared_problem: the header check of every restore (fast for PNG, else Pillow)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from flexforge.manifest import Asset, load_manifest
from flexforge.sources import declared_problem


def image(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def asset(tmp_path: Path) -> Asset:
    (tmp_path / "flexforge.yaml").write_text(
        "version: 1\nassets:\n  hero: {prompt: 'x', width: 128, height: 64, seed: 1}\n"
    )
    return load_manifest(tmp_path / "flexforge.yaml").assets["hero"]


def test_the_declared_png_passes(asset: Asset) -> None:
    assert declared_problem(image((128, 64)), asset) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (image((64, 128)), "64x128 where 128x64 is declared"),
        (image((128, 64), "JPEG"), "a JPEG image where PNG is declared"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
        (b"", "not a readable image"),
    ],
)
def test_anything_else_is_named(asset: Asset, data: bytes, problem: str) -> None:
    assert declared_problem(data, asset) == f"not the declared image ({problem})"


def test_a_png_whose_header_crc_fails_is_not_taken_on_its_word(asset: Asset) -> None:
    """The fast path reads the IHDR only when its CRC holds; a forged size falls to Pillow."""
    data = bytearray(image((128, 64)))
    data[16:24] = (128).to_bytes(4, "big") + (64).to_bytes(4, "big")  # the same size, CRC intact
    assert declared_problem(bytes(data), asset) is None
    data[29] ^= 0xFF  # the CRC broken
    assert declared_problem(bytes(data), asset) is not None
