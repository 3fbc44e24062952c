"""Writing review pages: one Jinja2 environment, shared templates and assets, images by digest.

The gallery and the diff are pages of the same kind of site: `index.html` (data inlined, so it
works from file:// where scripts may not fetch), `_static/` (CSS and JS, no CDN), `thumbs/` and
`images/` named by sha256. A folder is only written into when it is empty or was written by
flexforge before (it holds MARKER); files of earlier runs that no page names any more are removed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.fsutil import atomic_write
from flexforge.thumbs import DerivedImageError, Thumbs

TEMPLATES = Path(__file__).parent / "templates" / "site"
STATIC = ("site.css", "site.js")
MARKER = ".flexforge-site"
OWNED = ("thumbs", "images", "heatmaps")  # folders whose files are all ours, named by digest
LABELS = {"none": "up to date"}  # plan action "none" as a person reads it
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}


@dataclass(slots=True)
class SiteImage:
    full: str  # site-relative paths
    thumb: str
    width: int  # of the thumbnail, so the page reserves its place before it loads
    height: int


@cache
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["label"] = lambda v: LABELS.get(v, v)
    env.filters["usd"] = lambda v: "-" if v is None else f"${v:.4f}"
    # Only a plain hex colour goes into a style attribute (a prompt's palette is repository text).
    env.tests["hexcolor"] = lambda v: isinstance(v, str) and _HEX_COLOR.fullmatch(v) is not None
    return env


class Site:
    def __init__(self, out: Path, thumbs: Thumbs) -> None:
        self.out = out
        self.thumbs = thumbs
        self.written: set[Path] = set()
        self.missing: list[str] = []  # digests no source could give (named in the page)
        _claim(out)

    def image(self, sha256: str, load: Callable[[], bytes]) -> SiteImage | None:
        """Thumbnail and full-size copy of one image in the site; None when its bytes cannot be
        found or read (the page then says so instead of showing a broken image)."""
        from flexforge.imagesource import MissingImage

        try:
            thumb_src = self.thumbs.thumbnail(sha256, load)
            full = self._full(sha256, load)
        except (MissingImage, DerivedImageError):
            self.missing.append(sha256)
            return None
        thumb = self._copy(thumb_src, self.out / "thumbs" / thumb_src.name)
        width, height = _size(thumb_src)
        return SiteImage(full, thumb, width, height)

    def heatmap(
        self, before: str, after: str, load_before: Callable[[], bytes], load_after: Callable[[], bytes]
    ) -> str | None:
        from flexforge.imagesource import MissingImage

        try:
            src = self.thumbs.heatmap(before, after, load_before, load_after)
        except (MissingImage, DerivedImageError):
            return None
        return self._copy(src, self.out / "heatmaps" / src.name)

    def _full(self, sha256: str, load: Callable[[], bytes]) -> str:
        for ext in _EXT.values():
            existing = self.out / "images" / f"{sha256}.{ext}"
            if existing.is_file():
                self.written.add(existing)
                return f"images/{existing.name}"
        data = load()
        dest = self.out / "images" / f"{sha256}.{_ext(data)}"
        atomic_write(dest, data, durable=False)
        self.written.add(dest)
        return f"images/{dest.name}"

    def _copy(self, src: Path, dest: Path) -> str:
        if not dest.is_file() or dest.stat().st_size != src.stat().st_size:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        self.written.add(dest)
        return dest.relative_to(self.out).as_posix()

    def page(self, template: str, name: str = "index.html", **context: Any) -> Path:
        html = environment().get_template(template).render(**context)
        dest = self.out / name
        atomic_write(dest, html.encode(), durable=False)
        return dest

    def finish(self) -> None:
        """Write the static files and remove what earlier runs left that no page names now."""
        for name in STATIC:
            dest = self.out / "_static" / name
            src = TEMPLATES / name
            if not dest.is_file() or dest.read_bytes() != src.read_bytes():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        for folder in OWNED:
            for path in _files(self.out / folder):
                if path not in self.written:
                    path.unlink(missing_ok=True)

    def weight(self) -> dict[str, int]:
        """Bytes of the page itself (HTML, CSS, JS) and of the images it names."""
        page = sum((self.out / n).stat().st_size for n in ("index.html",) if (self.out / n).is_file())
        page += sum((self.out / "_static" / n).stat().st_size for n in STATIC)
        thumbs = sum(p.stat().st_size for p in self.written if p.parent.name in ("thumbs", "heatmaps"))
        full = sum(p.stat().st_size for p in self.written if p.parent.name == "images")
        return {"page_bytes": page, "thumb_bytes": thumbs, "image_bytes": full}


def _claim(out: Path) -> None:
    """Refuse to write into a folder someone else's files live in: its stale files get deleted."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FlexforgeError(f"{out} is not a folder; choose another output folder")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise FlexforgeError(
            f"{out} is not empty and was not written by flexforge; choose an empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Written by flexforge; rewritten on every run.\n", encoding="utf-8")


def _files(folder: Path) -> Iterable[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file() or p.is_symlink()]
    except OSError:
        return []


def _ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] == b"GIF8":
        return "gif"
    if data[4:12] in (b"ftypavif", b"ftypavis"):  # ISO-BMFF: the box size, then the brand
        return "avif"
    return "img"


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size
