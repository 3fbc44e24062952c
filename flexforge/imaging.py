"""Checks on image bytes: is this really the picture that was asked for?"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import ModuleType

# Pillow's format names for our output_format values. AVIF is made locally only (renditions):
# the API returns png, jpeg or webp.
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "avif": "avif"}
API_FORMATS = ("png", "jpeg", "webp")
LOCAL_FORMATS = ("avif",)
AVIF_CODEC = "aom"  # the encoder Pillow's wheels ship: pinned, so every machine writes the same bytes
AVIF_FIX = "install Pillow 11.3 or later from PyPI's wheels (`pip install -U 'pillow>=11.3'`)"


# What the API accepts as an input image.
MAX_REFERENCE_BYTES = 20 * 1024 * 1024
MAX_REFERENCE_PIXELS = 20_000_000
REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


# Pillow refuses to open images above twice this many pixels (a warning above it): the largest
# picture flexforge ever opens is a 20 MP reference, and no setting elsewhere may lift the limit.
MAX_OPEN_PIXELS = 2 * MAX_REFERENCE_PIXELS


def _pillow() -> ModuleType:
    """PIL.Image with the pixel limit set; imported late: a no-op build never opens an image."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_OPEN_PIXELS
    # Above the limit Pillow only warns (on stderr, mid-progress): flexforge's own size checks
    # refuse such images with a message of their own.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def avif_problem() -> str | None:
    """Why this Python's Pillow cannot write AVIF as flexforge does, and the fix; None if it can."""
    import PIL
    from PIL import features

    if not features.check("avif"):
        return f"this Pillow ({PIL.__version__}) has no AVIF support; {AVIF_FIX}"
    from PIL import _avif  # present: features.check said so

    if not _avif.encoder_codec_available(AVIF_CODEC):
        return f"this Pillow's libavif ({PIL.__version__}) has no {AVIF_CODEC} encoder; {AVIF_FIX}"
    return None


class ImageCheckError(ValueError):
    """The bytes are not a complete image of the requested size and format."""


def check_reference(path: Path, *, decode: bool = False) -> str | None:
    """Why this file cannot be sent as a reference image, or None when it can. Reads the header
    and the container's end (a cut-off download fails here), and decodes every pixel only with
    `decode` (before a paid call). A decompression bomb is refused by its declared size."""
    Image = _pillow()

    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if size > MAX_REFERENCE_BYTES:
        return f"{size / 2**20:.1f} MB; the API takes at most 20 MB per image"
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError:
        return "declares an absurd pixel count (a decompression bomb?); the API takes at most 20 MP"
    except Exception:  # Pillow raises many types for files it cannot read
        return "not a readable image (PNG, JPEG or WebP expected)"
    if fmt not in REFERENCE_FORMATS:
        return f"{fmt} images are not accepted; convert it to PNG, JPEG or WebP"
    if w * h > MAX_REFERENCE_PIXELS:
        return f"{w}x{h} is {w * h / 1e6:.1f} MP; the API takes at most 20 MP per image"
    if not _complete(path, fmt, size):
        return f"the {fmt} file is cut short (an interrupted download or copy?)"
    if decode:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as exc:  # Pillow raises many types for broken data
            return f"does not decode ({exc})"
    return None


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
# (bit depth, colour type) pairs PNG defines, which Pillow opens (PngImagePlugin._MODES).
_PNG_MODES = {(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3)}
_PNG_MODES |= {(8, 4), (16, 4), (8, 6), (16, 6)}
# Chunks Pillow reads before the pixels without any way to fail once they are this long and their
# CRC holds; any other chunk there (iCCP, tEXt, ...) is left to Pillow itself.
_PNG_PLAIN = {b"PLTE": 0, b"gAMA": 4, b"sRGB": 1, b"pHYs": 9, b"cHRM": 32}


def png_size(head: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its first bytes, when Pillow would open it and read that
    same size: IHDR first and sound (length, CRC, mode, filter), then only plain chunks until
    the first IDAT, all inside `head`. None when unsure: then Pillow reads the file."""
    import zlib

    if not head.startswith(PNG_MAGIC):
        return None
    pos, size = 8, None
    while pos + 8 <= len(head):
        length = int.from_bytes(head[pos : pos + 4], "big")
        cid = head[pos + 4 : pos + 8]
        if cid == b"IDAT":
            return size
        end = pos + 8 + length
        if end + 4 > len(head) or zlib.crc32(head[pos + 4 : end]) != int.from_bytes(
            head[end : end + 4], "big"
        ):
            return None
        data = head[pos + 8 : end]
        if size is None:
            # Compression and filter method 0, interlace 0 or 1: what the standard defines.
            sound = (
                length == 13 and (data[8], data[9]) in _PNG_MODES and data[10:13] in (b"\0\0\0", b"\0\0\1")
            )
            if cid != b"IHDR" or not sound:
                return None
            size = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
            if 0 in size:
                return None
        elif length < _PNG_PLAIN.get(cid, 2**32):
            return None  # not a plain chunk, or too short for Pillow's reader of it
        pos = end + 4
    return None


def png_reference_problem(head: bytes, tail: bytes, size: int) -> tuple[str | None, tuple[int, int]] | None:
    """check_reference's answer (and the image's size) for a PNG from its first and last bytes
    and its length, read once with its digest; None when only Pillow can tell."""
    dims = png_size(head)
    if dims is None:
        return None
    w, h = dims
    if size > MAX_REFERENCE_BYTES:
        return f"{size / 2**20:.1f} MB; the API takes at most 20 MB per image", dims
    if w * h > 2 * MAX_OPEN_PIXELS:
        return "declares an absurd pixel count (a decompression bomb?); the API takes at most 20 MP", dims
    if w * h > MAX_REFERENCE_PIXELS:
        return f"{w}x{h} is {w * h / 1e6:.1f} MP; the API takes at most 20 MP per image", dims
    if not tail.endswith(PNG_END):
        return "the PNG file is cut short (an interrupted download or copy?)", dims
    return None, dims


def _complete(path: Path, fmt: str, size: int) -> bool:
    """Whether the container ends where it says it does; formats without a cheap check pass."""
    with path.open("rb") as f:
        head = f.read(12)
        f.seek(max(0, size - 1024))
        tail = f.read()
    if fmt == "PNG":
        return tail.endswith(PNG_END)
    if fmt == "JPEG":
        return b"\xff\xd9" in tail  # some writers put padding after the end marker
    if fmt == "WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    if fmt == "GIF":
        return tail.rstrip(b"\x00").endswith(b";")
    return True


def verify_image(data: bytes, width: int, height: int, output_format: str) -> None:
    """Raise ImageCheckError unless `data` fully decodes as `output_format` at width x height.
    The header's format and size are compared first: an image declaring another size (a
    decompression bomb among them) is refused without decoding a pixel."""
    Image = _pillow()
    expected = PIL_FORMATS[output_format]
    try:
        with Image.open(io.BytesIO(data)) as img:
            actual_format, size = img.format, img.size
            if actual_format == expected and size == (width, height):
                img.load()  # decodes every byte: a truncated file fails here
    except Image.DecompressionBombError:
        raise ImageCheckError(
            f"expected {width}x{height}, got an image declaring over {2 * MAX_OPEN_PIXELS / 1e6:.0f} MP"
        ) from None
    except Exception as exc:  # Pillow raises many types for broken data
        raise ImageCheckError(f"not a decodable image ({exc})") from None
    if actual_format != expected:
        raise ImageCheckError(f"expected {expected}, got {actual_format}")
    if size != (width, height):
        raise ImageCheckError(f"expected {width}x{height}, got {size[0]}x{size[1]}")


# Fixed encoder settings: the same pixels always give the same bytes.
_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "png": {"optimize": False, "compress_level": 6},
    "jpeg": {"quality": 95, "subsampling": 0},
    "webp": {"quality": 95, "method": 4},
}


def fit_cover(data: bytes, width: int, height: int, output_format: str) -> bytes:
    """Scale the image to cover width x height and crop the centre: a 1088x1088 generation
    delivered as the 1080x1080 a social network wants."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        fitted = ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS)
    if output_format == "jpeg" and fitted.mode not in ("RGB", "L"):
        fitted = fitted.convert("RGB")
    buf = io.BytesIO()
    fitted.save(buf, format=PIL_FORMATS[output_format], **_SAVE_OPTIONS[output_format])
    return buf.getvalue()


def header_problem(data: bytes, width: int, height: int, output_format: str) -> str | None:
    """Why `data` is not a `output_format` image of width x height by its header, or None. Reads
    the header only: what restores check, so that no planted file is ever decoded in full."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            actual_format, size = img.format, img.size
    except Exception:  # Pillow raises many types for files it cannot read
        return "not a readable image"
    expected = PIL_FORMATS[output_format]
    if actual_format != expected:
        return f"a {actual_format} image where {expected} is declared"
    if size != (width, height):
        return f"{size[0]}x{size[1]} where {width}x{height} is declared"
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the file's header, or None when it cannot be read as an image."""
    Image = _pillow()
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # Pillow raises many types for files it cannot read; validation says why
        return None
    return int(width), int(height)


def fit_megapixels(width: int, height: int, max_mp: float) -> tuple[int, int]:
    """The size an image of width x height is scaled down to so that it holds at most `max_mp`
    megapixels (10^6 pixels), its aspect kept; unchanged when it already fits."""
    limit = max_mp * 1_000_000
    if width * height <= limit:
        return width, height
    scale = (limit / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def downscale(data: bytes, max_mp: float) -> bytes | None:
    """The image scaled down to at most `max_mp` megapixels, as PNG; None when it already fits.
    Deterministic: the same bytes and limit give the same pixels (Lanczos, no randomness), and
    the content key holds the original's digest and the limit, not these bytes."""
    Image = _pillow()
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        size = fit_megapixels(width, height, max_mp)
        if size == img.size:
            return None
        img.load()
        mode = img.mode if img.mode in ("RGB", "RGBA", "L", "LA") else "RGBA"
        small = img.convert(mode).resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=False)
    return out.getvalue()


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"
LFS_POINTER_LIMIT = 1024


def lfs_pointer(data: bytes) -> bool:
    """Whether these bytes are a Git LFS pointer file standing in for the real image."""
    return data.startswith(LFS_POINTER) and len(data) < LFS_POINTER_LIMIT
