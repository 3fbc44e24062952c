"""Image checks: the header is compared before any pixel is decoded."""

from __future__ import annotations

import pytest
from PIL import Image

from flexforge.imaging import MAX_OPEN_PIXELS, ImageCheckError, verify_image
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
