"""Images derived from outputs, cached by content digest: thumbnails, perceptual hashes, heatmaps.

Everything here is a pure function of the source bytes' sha256, so a file named by that digest is
never stale: a rerun after one asset changed makes one new thumbnail and reuses the rest. The
cache lives in the project's user cache folder (`paths.project_cache_dir`), never in the
repository: a committed thumbnail could show another picture than the image it stands for.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexforge.errors import FlexforgeError
from flexforge.fsutil import atomic_write
from flexforge.imaging import MAX_REFERENCE_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image

THUMB_BOX = (320, 320)  # fits a card at 2x on most screens while staying ~10 KB in WebP
THUMB_QUALITY = 78
THUMB_METHOD = 2  # WebP effort: half the time of the default 4 for ~5% more bytes
PHASH_SUFFIX = ".thumb.phash"  # of the thumbnail-sized image: what every caller compares
HEATMAP_BOX = (640, 640)
# Refused before decoding (a decompression bomb): outputs are at most 4 MP, and no image flexforge
# opens may be larger than a reference the API accepts.
MAX_PIXELS = MAX_REFERENCE_PIXELS

Loader = Callable[[], bytes]


class DerivedImageError(ValueError):
    """The source bytes are not an image Pillow can read."""


class Thumbs:
    """The cache folder, and counts of what this run made versus reused (shown to users)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made = 0
        self.reused = 0

    def _path(self, sha256: str, suffix: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}{suffix}"

    def thumbnail(self, sha256: str, load: Loader) -> Path:
        """A WebP thumbnail of the image whose bytes have this digest; its perceptual hash is
        computed from it in the same pass, since a diff will want it."""
        path = self._path(sha256, ".webp")
        if path.is_file():
            self.reused += 1
            return path
        thumb = _thumb(_open(load()))
        atomic_write(path, _webp(thumb), durable=False)
        if has_imagehash():  # a by-product for a later diff: without the extra, that diff says so
            self._write_phash(sha256, thumb)
        self.made += 1
        return path

    def phash(self, sha256: str, load: Loader) -> str:
        """The perceptual hash (imagehash.phash, 64 bits as hex) of the image, taken from its
        thumbnail-sized copy: pHash looks at 32 x 32 pixels, and shrinking a 4 MP image once
        is most of the cost of hashing it."""
        path = self._path(sha256, PHASH_SUFFIX)
        try:
            text = path.read_text(encoding="ascii").strip()
            if len(text) == 16:
                return text
        except (OSError, UnicodeDecodeError):
            pass
        return self._write_phash(sha256, _thumb(_open(load())))

    def _write_phash(self, sha256: str, thumb: Image) -> str:
        imagehash = require_imagehash()
        text = str(imagehash.phash(thumb))
        atomic_write(self._path(sha256, PHASH_SUFFIX), text.encode(), durable=False)
        return text

    def heatmap(self, before: str, after: str, load_before: Loader, load_after: Loader) -> Path:
        """Where the pixels differ, bright on dark: Pillow's ImageChops.difference of the two
        images at a common size, stretched so that a faint change is still visible."""
        path = self.folder / "heatmaps" / f"{before[:32]}-{after[:32]}.webp"
        if path.is_file():
            self.reused += 1
            return path
        from PIL import Image, ImageChops, ImageOps

        a, b = _open(load_before()), _open(load_after())
        a.thumbnail(HEATMAP_BOX)
        b = b.resize(a.size, Image.Resampling.BILINEAR)
        diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L")
        diff = ImageOps.autocontrast(diff)
        heat = ImageOps.colorize(diff, black="#0b0b1e", white="#ffe14d", mid="#e0402a")
        atomic_write(path, _webp(heat), durable=False)
        self.made += 1
        return path


@functools.cache
def has_imagehash() -> bool:
    """Asked once per thumbnail: a missing package is looked for once, not a thousand times."""
    try:
        import imagehash  # noqa: F401
    except ImportError:
        return False
    return True


def require_imagehash() -> Any:
    """imagehash, or an error saying how to install it (the `review` extra)."""
    try:
        import imagehash
    except ImportError:
        raise FlexforgeError(
            "flexforge diff measures how far images moved with imagehash, which is not installed: "
            "pip install 'flexforge[review]'"
        ) from None
    return imagehash


def distance(phash_a: str, phash_b: str) -> int:
    """Hamming distance of two perceptual hashes: 0 same picture, 64 unrelated (~32 random)."""
    imagehash = require_imagehash()
    return int(imagehash.hex_to_hash(phash_a) - imagehash.hex_to_hash(phash_b))


def _open(data: bytes) -> Image:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{img.width}x{img.height} is too many pixels to show")
            img.draft("RGB", THUMB_BOX)  # JPEG decodes at a reduced scale: much faster
            img.load()
            return img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise DerivedImageError(f"not a readable image ({exc})") from None


def _thumb(image: Image) -> Image:
    """The image shrunk in place to fit THUMB_BOX (no copy: the full image is not needed after)."""
    image.thumbnail(THUMB_BOX)
    return image


def _webp(image: Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=THUMB_QUALITY, method=THUMB_METHOD)
    return buf.getvalue()
