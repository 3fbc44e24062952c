"""Free renditions: an image derived locally from another (resize, cover-crop, pad, convert,
a logo, exact text), byte for byte the same in every process for the same operations and input."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

RENDITION = "rendition"  # the model and generator a rendition is keyed and recorded under
FITS = ("cover", "contain", "stretch")
POSITIONS = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
DEFAULT_QUALITY = 90


def operations(raw: dict[str, Any], width: int, height: int, output_format: str) -> dict[str, Any]:
    """The canonical operations of a rendition: what its key is made of (with its inputs'
    digests), in a fixed shape whatever the manifest left to defaults."""
    if "variants" in raw:  # a selection: the picked candidate's bytes, as they are
        return {"v": 1, "select": raw["variants"], "size": [width, height], "format": output_format}
    ops: dict[str, Any] = {
        "v": 1,
        "size": [width, height],
        "fit": raw.get("fit", "cover"),
        "background": raw.get("background", "#ffffff"),
        "format": output_format,
        "quality": raw.get("quality", DEFAULT_QUALITY) if output_format != "png" else None,
    }
    if "logo" in raw:
        logo = raw["logo"]
        ops["logo"] = {
            "file": logo["file"],
            "position": logo.get("position", "bottom-right"),
            "width": logo.get("width", 0.2),
            "margin": logo.get("margin", 0.04),
        }
    if "text" in raw:
        text = raw["text"]
        ops["text"] = {
            "text": text["text"],
            "position": text.get("position", "bottom"),
            "size": text.get("size", 0.06),
            "color": text.get("color", "#ffffff"),
            "margin": text.get("margin", 0.04),
            "font": text.get("font"),
        }
    return ops


def describe(ops: dict[str, Any]) -> str:
    """The operations as the key's `prompt` part holds them: canonical JSON."""
    return json.dumps(ops, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def render(ops: dict[str, Any], source: bytes, root: Path) -> bytes:
    """Apply `ops` to the image `source`; files named by the ops are read under `root`."""
    from PIL import Image, ImageOps

    if "select" in ops:
        return source
    with Image.open(io.BytesIO(source)) as img:
        img.load()
        base = img.convert("RGBA")
    size = (int(ops["size"][0]), int(ops["size"][1]))
    fit = ops["fit"]
    if fit == "cover":
        out = ImageOps.fit(base, size, method=Image.Resampling.LANCZOS)
    elif fit == "contain":
        out = ImageOps.pad(base, size, method=Image.Resampling.LANCZOS, color=_rgba(ops["background"]))
    else:
        out = base.resize(size, Image.Resampling.LANCZOS)
    if "logo" in ops:
        out = _logo(out, ops["logo"], root)
    if "text" in ops:
        out = _text(out, ops["text"], root)
    return _encode(out, ops["format"], ops["quality"], ops["background"])


def _rgba(color: str) -> tuple[int, int, int, int]:
    from PIL import ImageColor

    rgb = ImageColor.getrgb(color)
    return (rgb[0], rgb[1], rgb[2], rgb[3] if len(rgb) == 4 else 255)


def _place(canvas: tuple[int, int], item: tuple[int, int], position: str, margin: int) -> tuple[int, int]:
    vertical, _, horizontal = position.partition("-") if "-" in position else ("", "", position)
    if position in ("top", "bottom"):
        vertical, horizontal = position, "center"
    elif position in ("left", "right"):
        vertical, horizontal = "center", position
    elif position == "center":
        vertical = horizontal = "center"
    x = {"left": margin, "center": (canvas[0] - item[0]) // 2, "right": canvas[0] - item[0] - margin}[
        horizontal
    ]
    y = {"top": margin, "center": (canvas[1] - item[1]) // 2, "bottom": canvas[1] - item[1] - margin}[
        vertical
    ]
    return x, y


def _logo(out: Any, spec: dict[str, Any], root: Path) -> Any:
    from PIL import Image

    with Image.open(root / spec["file"]) as logo:
        logo.load()
        mark = logo.convert("RGBA")
    width = max(1, round(out.width * float(spec["width"])))
    height = max(1, round(mark.height * width / mark.width))
    mark = mark.resize((width, height), Image.Resampling.LANCZOS)
    margin = round(min(out.size) * float(spec["margin"]))
    out.alpha_composite(mark, _place(out.size, mark.size, spec["position"], margin))
    return out


def _text(out: Any, spec: dict[str, Any], root: Path) -> Any:
    from PIL import ImageDraw, ImageFont

    px = max(6, round(out.height * float(spec["size"])))
    font: Any
    if spec["font"]:
        font = ImageFont.truetype(str(root / spec["font"]), px, layout_engine=ImageFont.Layout.BASIC)
    else:
        font = ImageFont.load_default(size=px)  # Pillow's bundled font: shipped with flexforge's Pillow
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), spec["text"], font=font)
    margin = round(min(out.size) * float(spec["margin"]))
    box = (round(right - left), round(bottom - top))
    x, y = _place(out.size, box, spec["position"], margin)
    draw.text((x - left, y - top), spec["text"], font=font, fill=_rgba(spec["color"]))
    return out


def _encode(img: Any, fmt: str, quality: int | None, background: str) -> bytes:
    from PIL import Image

    from flexforge.errors import ProviderError
    from flexforge.imaging import AVIF_CODEC, PIL_FORMATS, avif_problem

    if fmt == "avif":
        problem = avif_problem()  # validation said so too, unless Pillow changed since
        if problem is not None:
            raise ProviderError(f"output_format avif: {problem}")
    if fmt == "jpeg":
        flat = Image.new("RGBA", img.size, _rgba(background))
        flat.alpha_composite(img)
        img = flat.convert("RGB")
    elif img.getextrema()[3] == (255, 255):
        img = img.convert("RGB")  # no transparency: a smaller file, the same pixels
    buf = io.BytesIO()
    settings: dict[str, dict[str, Any]] = {
        "png": {"optimize": False, "compress_level": 9},
        "jpeg": {"quality": quality, "subsampling": 0, "optimize": False, "progressive": False},
        "webp": {"quality": quality, "method": 6, "exact": True},
        # One thread, a fixed speed and codec: libavif's output then depends on the pixels and
        # these settings only, not on the machine's core count or which encoders it has.
        "avif": {"quality": quality, "speed": 6, "max_threads": 1, "codec": AVIF_CODEC},
    }
    options = settings[fmt]
    img.save(buf, format=PIL_FORMATS[fmt], **options)
    return buf.getvalue()
