"""Image checks: the header is compared before any pixel is decoded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from flexforge import reads
from flexforge.imaging import (
    MAX_OPEN_PIXELS,
    PNG_MAGIC,
    ImageCheckError,
    check_reference,
    image_size,
    png_reference_problem,
    verify_image,
)
from tests.helpers import Project
from tests.support.hostile import png_bytes, png_declaring, spy_on_decodes


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    return spy_on_decodes(monkeypatch)


def test_an_image_declaring_another_size_is_refused_without_decoding(decodes: list[tuple[int, int]]) -> None:
    with pytest.raises(ImageCheckError, match="expected 128x96, got 8000x8000"):
        verify_image(png_declaring(8000, 8000), 128, 96, "png")  # 192 MB of pixels
    with pytest.raises(ImageCheckError, match="expected 128x96, got an image declaring over 80 MP"):
        verify_image(png_declaring(9000, 9000), 128, 96, "png")  # beyond Pillow's limit
    assert decodes == []


def test_an_image_of_the_declared_size_is_decoded_in_full(decodes: list[tuple[int, int]]) -> None:
    verify_image(png_bytes(128, 96), 128, 96, "png")
    assert decodes == [(128, 96)]
    with pytest.raises(ImageCheckError, match="not a decodable image"):
        verify_image(png_bytes(128, 96)[:-40], 128, 96, "png")  # the header is right, the end is cut


def test_a_pillow_pixel_limit_lifted_elsewhere_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageCheckError, match="declaring over 80 MP"):
        verify_image(png_declaring(20_000, 20_000), 128, 96, "png")  # a 400 MP bomb
    assert Image.MAX_IMAGE_PIXELS == MAX_OPEN_PIXELS


def test_avif_headers_are_checked_like_the_other_formats() -> None:
    import io

    from PIL import Image

    from flexforge.imaging import header_problem, verify_image

    def encoded(fmt: str, size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
        return buf.getvalue()

    avif = encoded("AVIF", (48, 32))
    assert header_problem(avif, 48, 32, "avif") is None
    verify_image(avif, 48, 32, "avif")
    assert header_problem(avif, 32, 32, "avif") == "48x32 where 32x32 is declared"
    assert header_problem(avif, 48, 32, "png") == "a AVIF image where PNG is declared"
    assert header_problem(encoded("PNG", (48, 32)), 48, 32, "avif") == "a PNG image where AVIF is declared"
    with pytest.raises(ImageCheckError, match="not a decodable image"):
        verify_image(avif[: len(avif) // 2], 48, 32, "avif")


# -- a reference's header read from the bytes hashed with it, against Pillow's reading ----------


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(*chunks: bytes, tail: bytes = b"") -> bytes:
    return PNG_MAGIC + b"".join(chunks) + _chunk(b"IEND", b"") + tail


def _ihdr(width: int = 8, height: int = 8, depth: int = 8, colour: int = 2, rest: bytes = b"\0\0\0") -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBB", width, height, depth, colour) + rest)


IDAT = _chunk(b"IDAT", zlib.compress(bytes(25 * 8)))


def _pillow_made(mode: str, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 10)).save(buffer, fmt, **save)
    return buffer.getvalue()


def _with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by hand")
    return _pillow_made("RGB", pnginfo=info)


# Read from the bytes hashed with the file: Pillow is not asked.
FAST = {
    **{f"pillow {mode}": _pillow_made(mode) for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")},
    "pillow, with dpi (pHYs)": _pillow_made("RGB", dpi=(300, 300)),
    "plain": _png(_ihdr(), IDAT),
    "gAMA sRGB cHRM pHYs": _png(
        _ihdr(),
        _chunk(b"gAMA", bytes(4)),
        _chunk(b"sRGB", b"\0"),
        _chunk(b"cHRM", bytes(32)),
        _chunk(b"pHYs", bytes(9)),
        IDAT,
    ),
    "a lying header, 25 MP": _png(_ihdr(5000, 5000), IDAT),
    "a lying header, just over 80 MP": _png(_ihdr(9000, 9000), IDAT),
    "a lying header, a bomb": _png(_ihdr(200_000, 200_000), IDAT),
    "interlaced": _png(_ihdr(rest=b"\0\0\1"), IDAT),
    "cut short": _png(_ihdr(), IDAT)[:-20],
    "bytes after IEND": _png(_ihdr(), IDAT, tail=b"junk"),
    "no IEND": _png(_ihdr(), IDAT)[:-12],
}
# Anything the fast reader is unsure of goes to Pillow, whatever the answer.
SLOW = {
    "pillow, with text (tEXt)": _with_text(),
    "pillow, with an ICC profile (iCCP)": _pillow_made("RGB", icc_profile=b"\0" * 200),
    "a gAMA too short for Pillow": _png(_ihdr(), _chunk(b"gAMA", b"\0\0"), IDAT),
    "a bad CRC in gAMA": _png(_ihdr(), _chunk(b"gAMA", bytes(4), crc=1), IDAT),
    "a bad IHDR CRC": _png(_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0), crc=7), IDAT),
    "zero wide": _png(_ihdr(0, 8), IDAT),
    "an unknown depth": _png(_ihdr(depth=3), IDAT),
    "an unknown filter method": _png(_ihdr(rest=b"\0\1\0"), IDAT),
    "a strange interlace": _png(_ihdr(rest=b"\0\0\2"), IDAT),
    "an unknown compression": _png(_ihdr(rest=b"\1\0\0"), IDAT),
    "a long IHDR": _png(_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0) + b"\0"), IDAT),
    "IDAT first": _png(IDAT, _ihdr()),
    "two IHDR": _png(_ihdr(), _ihdr(), IDAT),
    "no IDAT": _png(_ihdr()),
    "header chunks past the first KB": _png(_ihdr(), *[_chunk(b"gAMA", bytes(4))] * 100, IDAT),
    "only the signature": PNG_MAGIC,
    "empty": b"",
    "not an image": b"hello, world\n" * 10,
    "a JPEG": _pillow_made("RGB", "JPEG"),
    "a WebP": _pillow_made("RGB", "WEBP"),
}


def _verdicts(tmp_path: Path, data: bytes) -> tuple[Any, tuple[str | None, tuple[int, int] | None]]:
    """(what the bytes read with the digest say, None when unsure; what Pillow says of the file)."""
    path = tmp_path / "ref.png"
    path.write_bytes(data)
    read = reads.read_file(str(path), ends=True)
    assert read is not None
    return png_reference_problem(read.head, read.tail, read.size), (check_reference(path), image_size(path))


def _same(fast: tuple[str | None, tuple[int, int]], slow: tuple[str | None, tuple[int, int] | None]) -> None:
    problem, size = fast
    assert problem == slow[0]
    if slow[1] is not None:  # Pillow gives no size for a bomb; the error is what counts then
        assert size == slow[1]


@pytest.mark.parametrize("name", list(FAST))
def test_a_png_header_read_with_the_digest_says_what_pillow_says(tmp_path: Path, name: str) -> None:
    fast, slow = _verdicts(tmp_path, FAST[name])
    assert fast is not None, "the fast reader should know this one"
    _same(fast, slow)


@pytest.mark.parametrize("name", list(SLOW))
def test_a_header_the_fast_reader_is_unsure_of_goes_to_pillow(tmp_path: Path, name: str) -> None:
    fast, _ = _verdicts(tmp_path, SLOW[name])
    assert fast is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from([FAST["plain"], FAST["gAMA sRGB cHRM pHYs"], FAST["pillow P"]]),
    flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 200)),
)
def test_a_damaged_png_header_is_judged_as_pillow_judges_it(
    tmp_path: Path, base: bytes, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    if cut is not None:
        del data[cut:]
    fast, slow = _verdicts(tmp_path, bytes(data))
    if fast is not None:
        _same(fast, slow)


def test_a_reference_whose_header_lies_is_refused_alike_either_way(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation, through the fast reader and through Pillow alone: the same located errors."""
    from flexforge import imaging
    from flexforge.errors import ManifestError
    from flexforge.manifest import load_manifest

    for name, data in {**FAST, **SLOW}.items():
        slug = "".join(c if c.isalnum() else "-" for c in name)
        (project.root / "refs").mkdir(exist_ok=True)
        (project.root / "refs" / f"{slug}.png").write_bytes(data)
    refs = sorted(p.name for p in (project.root / "refs").iterdir())
    lines = [
        f"  a{i}: {{prompt: x, model: flux-2-pro, references: [refs/{ref}]}}" for i, ref in enumerate(refs)
    ]
    path = project.manifest("version: 1\nassets:\n" + "\n".join(lines) + "\n")

    def answer() -> list[str]:
        with pytest.raises(ManifestError) as caught:
            load_manifest(path, "flexforge.yaml")
        return [str(d) for d in caught.value.diagnostics]

    fast = answer()
    monkeypatch.setattr(imaging, "png_reference_problem", lambda *args: None)
    assert answer() == fast
    assert any("25.0 MP" in line for line in fast) and any("decompression bomb" in line for line in fast)
    assert any("cut short" in line for line in fast) and any("not a readable image" in line for line in fast)
