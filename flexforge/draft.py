"""The draft renderer: a deterministic local layout preview of what a request asks for.

It draws the prompt's quoted text as the headline, the rest as a caption, a structured prompt's
palette as colour fields and its subjects as labelled blocks, and the references as thumbnails,
in a composition the seed steers. Same request, same Pillow: same bytes, on any machine.

Only what is in the content key may change the pixels: the asset id and the references' labels
are not, so neither is drawn (a cached output may be restored for another asset with that key).
"""

from __future__ import annotations

import colorsys
import io
import json
import random
import re
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from flexforge.request import ImageRequest

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom

INK_DARK: RGB = (0, 0, 0)  # pure black: with white, it reads (>= 4.5:1) on any colour
INK_LIGHT: RGB = (255, 255, 255)

# Fixed encoder settings: the bytes depend on the pixels and the Pillow build, nothing else.
_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "png": ("PNG", {"optimize": False, "compress_level": 3}),
    "jpeg": ("JPEG", {"quality": 90, "subsampling": 0, "optimize": False, "progressive": False}),
    "webp": ("WEBP", {"quality": 85, "method": 2, "lossless": False}),
}

# A structured prompt's keys in the order they are read, so the result never hangs on how the
# mapping was built; unknown keys follow in sorted order.
_STRUCTURED_ORDER = (
    "scene",
    "subjects",
    "style",
    "color_palette",
    "lighting",
    "mood",
    "background",
    "composition",
    "camera",
)
_DETAIL_KEYS = ("style", "lighting", "mood", "background", "composition", "camera")

# Opening/closing pairs. A straight single quote only counts when it is not inside a word, so
# apostrophes ("Northwind's", "don't") are not mistaken for quotations.
_QUOTE_RE = re.compile(
    r"\"(?P<d>[^\"\n]+)\""
    r"|(?<!\w)'(?P<s>[^'\n]+?)'(?!\w)"
    r"|“(?P<cd>[^”\n]+)”"
    "|\u2018(?P<cs>[^\u2019\n]+)\u2019"
    r"|«(?P<g>[^»\n]+)»"
)


_QUOTED_MARK = "\u201c\u2026\u201d"  # “…”


# --- what the request asks for ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Subject:
    description: str
    position: str
    action: str
    quoted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Brief:
    headlines: tuple[str, ...]
    caption: str
    details: str
    palette: tuple[RGB, ...]
    subjects: tuple[_Subject, ...]


def _quoted_text(text: str) -> list[str]:
    """Every quoted span in `text`, in order, without its quote marks."""
    spans = []
    for match in _QUOTE_RE.finditer(text):
        inner = next(group for group in match.groups() if group is not None)
        if inner.strip():
            spans.append(" ".join(inner.split()))
    return spans


def _without_quotes(text: str) -> str:
    """`text` with each quotation shown as a mark, since the quotation is drawn on its own."""
    return " ".join(_QUOTE_RE.sub(_QUOTED_MARK, text).split())


def _structured(request: ImageRequest) -> Mapping[str, Any] | None:
    if request.structured is not None:
        return request.structured
    # The emulator receives a structured prompt only as the JSON text the API carries.
    if request.prompt.lstrip().startswith("{"):
        try:
            parsed = json.loads(request.prompt)
        except ValueError:
            return None
        if isinstance(parsed, dict):
            return parsed
    return None


def _ordered_items(mapping: Mapping[Any, Any]) -> Iterator[tuple[str, Any]]:
    for key in _STRUCTURED_ORDER:
        if key in mapping:
            yield key, mapping[key]
    # YAML may give non-string keys: sort them by their text, never by hash or insertion.
    for key in sorted((k for k in mapping if k not in _STRUCTURED_ORDER), key=str):
        yield str(key), mapping[key]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for _, item in _ordered_items(value):
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _plain(value: Any) -> str:
    """A free-form structured value as one line of text."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_plain(item)}".strip() for key, item in _ordered_items(value))
    if isinstance(value, list | tuple):
        return ", ".join(_plain(item) for item in value)
    return " ".join(str(value).split())


def _subject(value: Any) -> _Subject:
    if isinstance(value, Mapping):
        description = _plain(value.get("description") or value.get("name") or "")
        position, action = _plain(value.get("position")), _plain(value.get("action"))
    else:
        description, position, action = _plain(value), "", ""
    return _Subject(
        description=_without_quotes(description),
        position=position,
        action=action,
        quoted=tuple(_quoted_text(description)),
    )


def _colour(value: Any) -> RGB | None:
    text = str(value).strip()
    if re.fullmatch(r"[0-9a-fA-F]{6}|[0-9a-fA-F]{3}", text):
        text = "#" + text
    match = re.fullmatch(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})", text)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def _read_brief(request: ImageRequest) -> _Brief:
    spec = _structured(request)
    if spec is None:
        return _Brief(
            headlines=tuple(_quoted_text(request.prompt)),
            caption=_without_quotes(request.prompt),
            details="",
            palette=(),
            subjects=(),
        )
    raw_subjects = spec.get("subjects") or []
    if not isinstance(raw_subjects, list | tuple):
        raw_subjects = [raw_subjects]
    raw_palette = spec.get("color_palette") or []
    if not isinstance(raw_palette, list | tuple):
        raw_palette = [raw_palette]
    # Quotes inside subjects are lettering on that subject; any other quote is the headline.
    headlines = [
        quote
        for key, value in _ordered_items(spec)
        if key != "subjects"
        for text in _strings(value)
        for quote in _quoted_text(text)
    ]
    details = " · ".join(
        f"{key}: {_without_quotes(_plain(spec[key]))}" for key in _DETAIL_KEYS if _plain(spec.get(key))
    )
    return _Brief(
        headlines=tuple(headlines),
        caption=_without_quotes(_plain(spec.get("scene"))),
        details=details,
        palette=tuple(c for c in (_colour(v) for v in raw_palette) if c is not None),
        subjects=tuple(_subject(item) for item in raw_subjects),
    )


# --- colour ------------------------------------------------------------------------------------


def _luminance(colour: RGB) -> float:
    """WCAG relative luminance."""

    def channel(value: int) -> float:
        v = value / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = colour
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(a: RGB, b: RGB) -> float:
    """WCAG contrast ratio, 1 to 21."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _ink(background: RGB, candidates: Sequence[RGB] = ()) -> RGB:
    """A palette colour that reads well on `background`, else near-black or white."""
    readable = [c for c in candidates if _contrast(c, background) >= 7]
    if readable:
        return max(readable, key=lambda c: _contrast(c, background))
    return max((INK_DARK, INK_LIGHT), key=lambda c: _contrast(c, background))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _hls(hue: float, lightness: float, saturation: float) -> RGB:
    r, g, b = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return (round(r * 255), round(g * 255), round(b * 255))


def _seed_palette(rng: random.Random) -> tuple[RGB, ...]:
    hue = rng.random()
    # complementary, analogous, triadic, split-complementary
    offset = rng.choice((0.5, 0.09, 1 / 3, 0.42))
    return (
        _hls(hue, 0.17, 0.45),
        _hls(hue, 0.40, 0.50),
        _hls(hue + offset, 0.58, 0.72),
        _hls(hue + offset / 2, 0.90, 0.40),
    )


@dataclass(frozen=True, slots=True)
class _Scheme:
    base: RGB  # the background
    gradient_to: RGB
    accents: tuple[RGB, ...]  # fields, blocks and plates, never empty
    swatches: tuple[RGB, ...]  # the declared palette, shown as chips


def _scheme(palette: tuple[RGB, ...], rng: random.Random) -> _Scheme:
    colours = palette or _seed_palette(rng)
    by_light = sorted(colours, key=lambda c: (_luminance(c), c))
    base = by_light[0] if rng.random() < 0.6 else by_light[-1]
    others = [c for c in colours if c != base] or [_mix(base, _ink(base), 0.45)]
    rng.shuffle(others)
    return _Scheme(
        base=base,
        gradient_to=_mix(base, others[0], 0.35),
        accents=tuple(others),
        swatches=palette,
    )


# --- type --------------------------------------------------------------------------------------


# Written as escapes: these look like ASCII in an editor, which is the point of folding them.
_FOLD = str.maketrans(
    {
        "\u2014": " - ",  # em dash
        "\u2013": "-",  # en dash
        "\u00d7": "x",  # multiplication sign
        "\u00df": "ss",  # sharp s
        "\u20ac": "EUR",
        "\u00a3": "GBP",
        "\u2122": "TM",
        "\u00ae": "(R)",
    }
)


def _printable(text: str) -> str:
    """Fold characters Pillow's bundled font lacks into ones it has (é -> e, — -> -)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


class Typeface:
    """Pillow's bundled font at any size: FreeType if built in, else the scaled bitmap font."""

    # The bitmap font's natural line height, from which the fallback scales.
    _BITMAP_PX = 11

    def __init__(self, *, freetype: bool = True) -> None:
        base = ImageFont.load_default(size=16) if freetype else None
        self._freetype = base if isinstance(base, ImageFont.FreeTypeFont) else None
        self._bitmap = ImageFont.load_default_imagefont() if self._freetype is None else None
        self._sizes: dict[int, ImageFont.FreeTypeFont] = {}

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        assert self._freetype is not None
        font = self._sizes.get(size)
        if font is None:
            # BASIC layout: raqm is optional in Pillow builds and may shape text differently.
            font = self._freetype.font_variant(size=size, layout_engine=ImageFont.Layout.BASIC)
            self._sizes[size] = font
        return font

    def _scale(self, size: int) -> int:
        return max(1, round(size / self._BITMAP_PX))

    @staticmethod
    def stroke(size: int, bold: bool) -> int:
        # Aileron ships in one weight; a thin stroke in the text colour stands in for bold.
        return max(1, size // 28) if bold else 0

    def advance(self, text: str, size: int) -> float:
        """How far `text` moves the pen, not counting the bold stroke."""
        if self._bitmap is not None:
            return self._bitmap.getlength(_latin1(text)) * self._scale(size)
        return self._font(size).getlength(text)

    def width(self, text: str, size: int, *, bold: bool = False) -> int:
        extra = 2 * self.stroke(size, bold) if self._bitmap is None else 0
        return round(self.advance(text, size)) + extra

    @staticmethod
    def line_height(size: int) -> int:
        return round(size * 1.2)

    def draw(
        self,
        canvas: Image.Image,
        xy: tuple[int, int],
        text: str,
        size: int,
        fill: RGB,
        *,
        bold: bool = False,
    ) -> None:
        x, y = xy
        if self._bitmap is None:
            stroke = self.stroke(size, bold)
            ImageDraw.Draw(canvas).text(
                (x + stroke, y + round(size * 0.1)),
                text,
                font=self._font(size),
                fill=fill,
                stroke_width=stroke,
                stroke_fill=fill,
            )
            return
        scale = self._scale(size)
        text = _latin1(text)
        natural = (max(1, round(self._bitmap.getlength(text))), self._BITMAP_PX)
        mask = Image.new("L", natural, 0)
        ImageDraw.Draw(mask).text((0, 0), text, font=self._bitmap, fill=255)
        mask = mask.resize((natural[0] * scale, natural[1] * scale), Image.Resampling.NEAREST)
        top = y + round(size * 0.1)
        canvas.paste(fill, (x, top, x + mask.width, top + mask.height), mask)


# The bitmap font encodes text as Latin-1 and fails on anything else.
_LATIN1 = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2026": "..."})


def _latin1(text: str) -> str:
    return text.translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


_local = threading.local()


def _typeface() -> Typeface:
    # One per thread: renders run in worker threads and a FreeType face is not thread-safe.
    face: Typeface | None = getattr(_local, "typeface", None)
    if face is None:
        face = _local.typeface = Typeface()
    return face


@dataclass(frozen=True, slots=True)
class _Text:
    lines: tuple[str, ...]
    size: int
    bold: bool = False

    @property
    def height(self) -> int:
        return len(self.lines) * Typeface.line_height(self.size)

    def width(self, face: Typeface) -> int:
        return max((face.width(line, self.size, bold=self.bold) for line in self.lines), default=0)


def _wrap(face: Typeface, text: str, size: int, max_width: int, bold: bool, limit: int) -> list[str]:
    """Greedy word wrap; stops past `limit` lines, since a long prompt only needs a few.

    Each word is measured once and lines are summed from words: measuring whole lines again
    for every word made a long caption cost half a second.
    """
    room = max_width - face.width("", size, bold=bold)
    space = face.advance(" ", size)
    widths: dict[str, float] = {}
    lines: list[str] = []
    line: list[str] = []
    line_width = 0.0
    for word in text.split():
        if len(lines) > limit:
            break
        if word not in widths:
            widths[word] = face.advance(word, size)
        width = widths[word]
        if line and line_width + space + width <= room:
            line.append(word)
            line_width += space + width
            continue
        if line:
            lines.append(" ".join(line))
        while width > room and len(word) > 1 and len(lines) <= limit:
            cut = _longest_fit(face, word, size, max_width, bold)
            lines.append(word[:cut])
            word = word[cut:]
            width = face.advance(word, size)
        line, line_width = [word], width
    if line and len(lines) <= limit:
        lines.append(" ".join(line))
    return lines


def _longest_fit(face: Typeface, text: str, size: int, max_width: int, bold: bool, suffix: str = "") -> int:
    """The longest prefix of `text` that, followed by `suffix`, fits in `max_width`; >= 1."""
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if face.width(text[:mid] + suffix, size, bold=bold) <= max_width:
            low = mid
        else:
            high = mid - 1
    return low


def _fit(
    face: Typeface,
    text: str,
    box: tuple[int, int],
    sizes: tuple[int, int],
    max_lines: int,
    *,
    bold: bool = False,
) -> _Text:
    """The largest size in `sizes` (max, min) at which `text` wraps into `box`, else truncated."""
    max_width, max_height = box
    largest, smallest = sizes
    text = _printable(text)
    size = max(largest, smallest)
    while True:
        lines = _wrap(face, text, size, max_width, bold, max_lines)
        fits = len(lines) <= max_lines and len(lines) * Typeface.line_height(size) <= max_height
        if fits or size <= smallest:
            break
        size = max(smallest, min(size - 1, round(size * 0.9)))
    room = min(max_lines, max(1, max_height // Typeface.line_height(size)))
    if len(lines) > room:
        lines = lines[:room]
        lines[-1] = _ellipsize(face, lines[-1], size, max_width, bold)
    return _Text(tuple(lines), size, bold)


def _ellipsize(face: Typeface, line: str, size: int, max_width: int, bold: bool) -> str:
    """`line` cut short to end in an ellipsis, marking text that did not fit."""
    cut = _longest_fit(face, line, size, max_width, bold, suffix="…")
    return line[:cut].rstrip() + "…"


def _draw_text(
    canvas: Image.Image,
    face: Typeface,
    text: _Text,
    origin: tuple[int, int],
    fill: RGB,
    *,
    align_width: int | None = None,
) -> None:
    """Draw `text` from its top-left; with `align_width`, centre each line in that width."""
    x, y = origin
    step = Typeface.line_height(text.size)
    for index, line in enumerate(text.lines):
        dx = 0
        if align_width is not None:
            dx = (align_width - face.width(line, text.size, bold=text.bold)) // 2
        face.draw(canvas, (x + dx, y + index * step), line, text.size, fill, bold=text.bold)


# --- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    width: int
    height: int
    unit: int  # the short side: every size scales with it
    margin: int
    gap: int
    footer: Box
    content: Box  # inside the margins, above the footer
    headline_style: Literal["band", "card", "centred"]
    gradient: Literal["down", "across", "diagonal", "up"]
    references_first: bool  # references left of (or above) the subjects


def _layout(request: ImageRequest, rng: random.Random) -> _Layout:
    width, height = request.width, request.height
    unit = min(width, height)
    margin = max(6, round(unit * 0.05))
    footer_h = Typeface.line_height(_footer_size(unit)) + max(4, round(unit * 0.016))
    return _Layout(
        width=width,
        height=height,
        unit=unit,
        margin=margin,
        gap=max(4, round(unit * 0.025)),
        footer=(0, height - footer_h, width, height),
        content=(margin, margin, width - margin, height - footer_h - margin),
        headline_style=rng.choice(("band", "card", "centred")),
        gradient=rng.choice(("down", "across", "diagonal", "up")),
        references_first=rng.random() < 0.5,
    )


def _footer_size(unit: int) -> int:
    return max(10, round(unit * 0.022))


def _take_top(box: Box, height: int, gap: int) -> tuple[Box, Box]:
    left, top, right, bottom = box
    cut = min(bottom, top + height)
    return (left, top, right, cut), (left, min(bottom, cut + gap), right, bottom)


def _take_bottom(box: Box, height: int, gap: int) -> tuple[Box, Box]:
    left, top, right, bottom = box
    cut = max(top, bottom - height)
    return (left, cut, right, bottom), (left, top, right, max(top, cut - gap))


def _take_side(box: Box, width: int, gap: int, first: bool) -> tuple[Box, Box]:
    left, top, right, bottom = box
    if first:
        cut = min(right, left + width)
        return (left, top, cut, bottom), (min(right, cut + gap), top, right, bottom)
    cut = max(left, right - width)
    return (cut, top, right, bottom), (left, top, max(left, cut - gap), bottom)


def _size(box: Box) -> tuple[int, int]:
    return max(0, box[2] - box[0]), max(0, box[3] - box[1])


# --- painting ----------------------------------------------------------------------------------


def _gradient_mask(kind: str, size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L")  # 256x256, black at the top
    if kind == "up":
        ramp = ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    elif kind == "across":
        ramp = ramp.transpose(Image.Transpose.ROTATE_90)
    elif kind == "diagonal":
        ramp = Image.blend(ramp, ramp.transpose(Image.Transpose.ROTATE_90), 0.5)
    return ramp.resize(size, Image.Resampling.BILINEAR)


def _paint_background(layout: _Layout, scheme: _Scheme, rng: random.Random) -> Image.Image:
    # Colour fields are painted small and scaled up: soft edges for free, and cheap at 4 MP.
    small = (max(16, layout.width // 8), max(16, layout.height // 8))
    mask = _gradient_mask(layout.gradient, small)
    field_layer = Image.composite(
        Image.new("RGB", small, scheme.gradient_to), Image.new("RGB", small, scheme.base), mask
    )
    draw = ImageDraw.Draw(field_layer, "RGBA")
    short = min(small)
    for index in range(rng.randint(3, 5)):
        colour = scheme.accents[index % len(scheme.accents)]
        radius = round(short * rng.uniform(0.18, 0.5))
        cx, cy = rng.randint(0, small[0]), rng.randint(0, small[1])
        alpha = rng.randint(70, 150)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=(*colour, alpha))
        else:
            draw.rounded_rectangle(box, radius=radius // 3, fill=(*colour, alpha))
    field_layer = field_layer.filter(ImageFilter.GaussianBlur(max(1, short // 14)))
    return field_layer.resize((layout.width, layout.height), Image.Resampling.BICUBIC)


def _plate_colour(scheme: _Scheme) -> RGB:
    return max(scheme.accents, key=lambda c: (_contrast(c, scheme.base), c))


def _headline_block(
    face: Typeface, brief: _Brief, layout: _Layout, max_height: int
) -> tuple[_Text, _Text | None, int]:
    """The headline (and the other quotes as a subhead), fitted together; and their padding."""
    content_w, _ = _size(layout.content)
    pad = max(6, round(layout.unit * 0.035))
    text_w = content_w - 2 * pad
    budget = max_height - 2 * pad
    head_text = brief.headlines[0]
    sub_text = " / ".join(brief.headlines[1:])
    largest = max(14, round(layout.unit * 0.15))
    smallest = max(12, round(layout.unit * 0.035))
    sub_share = 0.3 if sub_text else 0.0
    head = _fit(
        face,
        head_text,
        (text_w, round(budget * (1 - sub_share))),
        (largest, smallest),
        4,
        bold=True,
    )
    sub = None
    if sub_text:
        sub_size = max(10, round(head.size * 0.42))
        room = budget - head.height - pad // 2
        sub = _fit(face, sub_text, (text_w, max(room, 1)), (sub_size, max(10, sub_size // 2)), 2)
    return head, sub, pad


def _paint_headline(canvas: Image.Image, layout: _Layout, brief: _Brief, scheme: _Scheme) -> Box:
    """Draw the quoted text on a solid plate at the top; return the area the plate takes."""
    face = _typeface()
    head, sub, pad = _headline_block(face, brief, layout, round(_size(layout.content)[1] * 0.4))
    text_h = head.height + (sub.height + pad // 2 if sub else 0)
    text_w = max(head.width(face), sub.width(face) if sub else 0)
    left, top, right, _ = layout.content
    plate = _plate_colour(scheme)
    ink = _ink(plate, scheme.accents)
    draw = ImageDraw.Draw(canvas)
    if layout.headline_style == "band":
        box = (0, 0, layout.width, top + text_h + pad)
        draw.rectangle(box, fill=plate)
        origin, align = (left, top), None
    else:
        plate_w = text_w + 2 * pad
        x0 = left if layout.headline_style == "card" else (left + right - plate_w) // 2
        box = (x0, top, x0 + plate_w, top + text_h + 2 * pad)
        draw.rounded_rectangle(box, radius=pad // 2, fill=plate)
        origin = (x0 + pad, top + pad)
        align = text_w if layout.headline_style == "centred" else None
    _draw_text(canvas, face, head, origin, ink, align_width=align)
    if sub is not None:
        sub_origin = (origin[0], origin[1] + head.height + pad // 2)
        _draw_text(canvas, face, sub, sub_origin, ink, align_width=align)
    return box


def _caption_block(
    face: Typeface, brief: _Brief, layout: _Layout, area: Box
) -> tuple[_Text | None, _Text | None, int]:
    area_w, area_h = _size(area)
    pad = max(5, round(layout.unit * 0.02))
    size = max(11, round(layout.unit * 0.026))
    room = (area_w - 2 * pad, round(area_h * 0.22))
    # A caption stays readable: a long prompt is cut short rather than set in tiny type.
    legible = max(11, round(size * 0.75))
    caption = _fit(face, brief.caption, room, (size, legible), 3) if brief.caption else None
    details = None
    if brief.details:
        small = max(10, round(size * 0.8))
        details = _fit(face, brief.details, (room[0], room[1] // 2), (small, legible), 2)
    return caption, details, pad


def _paint_caption(canvas: Image.Image, layout: _Layout, brief: _Brief, scheme: _Scheme, area: Box) -> Box:
    """Draw the palette chips and the caption on a plate at the bottom of `area`; return it."""
    face = _typeface()
    caption, details, pad = _caption_block(face, brief, layout, area)
    chip = max(10, round(layout.unit * 0.04)) if scheme.swatches else 0
    heights = [h for h in (chip, caption and caption.height, details and details.height) if h]
    left, _, right, bottom = area
    if not heights:
        return (left, bottom, right, bottom)
    box = (left, bottom - sum(heights) - pad * (len(heights) + 1), right, bottom)
    plate = _mix(scheme.base, INK_DARK if _luminance(scheme.base) < 0.18 else INK_LIGHT, 0.55)
    ink = _ink(plate)
    ImageDraw.Draw(canvas).rounded_rectangle(box, radius=pad, fill=plate)
    y = box[1] + pad
    if chip:
        _paint_chips(canvas, face, scheme.swatches, (left + pad, y), chip, right - pad, ink)
        y += chip + pad
    for text in (caption, details):
        if text is not None:
            _draw_text(canvas, face, text, (left + pad, y), ink)
            y += text.height + pad
    return box


def _paint_chips(
    canvas: Image.Image,
    face: Typeface,
    colours: Sequence[RGB],
    origin: tuple[int, int],
    chip: int,
    right: int,
    ink: RGB,
) -> None:
    """Solid squares of the declared palette, each labelled with its hex value."""
    draw = ImageDraw.Draw(canvas)
    label_size = max(10, round(chip * 0.5))
    x, y = origin
    for colour in colours:
        label = "#{:02X}{:02X}{:02X}".format(*colour)
        label_w = face.width(label, label_size)
        if x + chip > right:
            break
        draw.rectangle((x, y, x + chip - 1, y + chip - 1), fill=colour, outline=ink)
        x += chip + chip // 4
        if x + label_w <= right:
            face.draw(canvas, (x, y + (chip - label_size) // 2 - 1), label, label_size, ink)
            x += label_w
        x += chip // 2


def _paint_footer(canvas: Image.Image, layout: _Layout, request: ImageRequest) -> None:
    face = _typeface()
    size = _footer_size(layout.unit)
    top = layout.footer[1]
    ImageDraw.Draw(canvas).rectangle(layout.footer, fill=INK_DARK)
    y = top + (layout.footer[3] - top - Typeface.line_height(size)) // 2
    label = _printable(f"DRAFT · {request.model} · seed {request.seed} · {request.width}x{request.height}")
    x = layout.margin
    face.draw(canvas, (x, y), label, size, INK_LIGHT)
    note = "layout preview, not a final render"
    note_w = face.width(note, size)
    if x + face.width(label, size) + 2 * layout.gap + note_w <= layout.width - layout.margin:
        face.draw(canvas, (layout.width - layout.margin - note_w, y), note, size, (170, 170, 170))


def _load_thumbnail(path: Path, fit: tuple[int, int]) -> Image.Image | None:
    """The reference shrunk to fit, or None if it cannot be decoded."""
    try:
        with Image.open(path) as source:
            longest = max(fit)
            # JPEG decodes at a reduced scale here, so a huge photo costs little.
            source.draft("RGB", (longest, longest))
            source.thumbnail((longest, longest))
            image = ImageOps.exif_transpose(source)
            image.thumbnail(fit)
            return image.convert("RGBA")
    except Exception:  # Pillow raises many types for broken or hostile files
        return None


def _paint_references(
    canvas: Image.Image, layout: _Layout, request: ImageRequest, area: Box, scheme: _Scheme
) -> None:
    face = _typeface()
    count = len(request.references)
    gap = max(3, layout.gap // 2)
    cells = _grid(area, count, gap, largest=round(layout.unit * 0.8))
    # Cells are all one size: fit the longest label once, so labels never spill out.
    label_size = _fit(
        face, f"image {count}", (_size(cells[0])[0] - 2 * gap, layout.unit), (layout.unit // 40, 10), 1
    ).size
    label_h = Typeface.line_height(label_size)
    plate = _mix(scheme.base, INK_LIGHT if _luminance(scheme.base) < 0.18 else INK_DARK, 0.15)
    ink = _ink(plate)
    draw = ImageDraw.Draw(canvas)
    for index, (reference, cell) in enumerate(zip(request.references, cells, strict=True)):
        label = f"image {index + 1}"
        inner = (cell[0] + gap, cell[1] + gap + label_h, cell[2] - gap, cell[3] - gap)
        fit = _size(inner)
        thumb = _load_thumbnail(reference.path, fit) if min(fit) >= 4 else None
        if thumb is None:
            draw.rounded_rectangle(cell, radius=gap, fill=plate)
            face.draw(canvas, (cell[0] + gap, cell[1] + gap // 2), label, label_size, ink)
            if min(fit) >= 4:
                _paint_placeholder(canvas, face, inner, label_size, ink)
            continue
        x = inner[0] + (fit[0] - thumb.width) // 2
        y = inner[1] + (fit[1] - thumb.height) // 2
        # The plate hugs the thumbnail (and its label), so a wide image does not float in an
        # empty card.
        label_w = face.width(label, label_size)
        right = max(x + thumb.width, x + label_w)
        draw.rounded_rectangle(
            (x - gap, y - gap - label_h, right + gap, y + thumb.height + gap), radius=gap, fill=plate
        )
        face.draw(canvas, (x, y - label_h - gap // 2), label, label_size, ink)
        canvas.paste(thumb, (x, y), thumb)
        draw.rectangle((x - 1, y - 1, x + thumb.width, y + thumb.height), outline=ink)


def _grid(area: Box, count: int, gap: int, largest: int) -> list[Box]:
    """`count` cells, as large as fit in `area` without getting far from square, centred."""
    area_w, area_h = _size(area)

    def cell(columns: int) -> tuple[int, int]:
        rows = -(-count // columns)
        return (area_w - gap * (columns - 1)) // columns, (area_h - gap * (rows - 1)) // rows

    columns = max(range(1, count + 1), key=lambda c: (min(cell(c)), -c))
    rows = -(-count // columns)
    cell_w, cell_h = cell(columns)
    cell_w, cell_h = min(cell_w, largest, round(cell_h * 1.5)), min(cell_h, largest)
    cell_h = min(cell_h, round(cell_w * 1.1))
    left = area[0] + (area_w - columns * cell_w - gap * (columns - 1)) // 2
    top = area[1] + (area_h - rows * cell_h - gap * (rows - 1)) // 2
    boxes = []
    for index in range(count):
        x = left + (index % columns) * (cell_w + gap)
        y = top + (index // columns) * (cell_h + gap)
        boxes.append((x, y, x + cell_w, y + cell_h))
    return boxes


def _paint_placeholder(canvas: Image.Image, face: Typeface, box: Box, size: int, ink: RGB) -> None:
    """A crossed-out frame where a reference could not be decoded: visible, never fatal."""
    draw = ImageDraw.Draw(canvas)
    draw.rectangle(box, outline=ink, width=2)
    draw.line(box, fill=ink, width=1)
    draw.line((box[0], box[3], box[2], box[1]), fill=ink, width=1)
    note = "unreadable"
    size = max(10, min(size, _size(box)[1] // 3))
    note_w = face.width(note, size)
    if note_w + 8 <= _size(box)[0]:
        x = (box[0] + box[2] - note_w) // 2
        y = (box[1] + box[3] - Typeface.line_height(size)) // 2
        draw.rectangle((x - 2, y, x + note_w + 2, y + Typeface.line_height(size)), fill=_ink(ink))
        face.draw(canvas, (x, y), note, size, ink)


_COLUMN_WORDS = {"left": 0, "right": 2, "center": 1, "centre": 1, "middle": 1, "central": 1}
_ROW_WORDS = {
    "top": 0,
    "upper": 0,
    "above": 0,
    "background": 0,
    "bottom": 2,
    "lower": 2,
    "below": 2,
    "foreground": 2,
}


def _grid_position(position: str) -> tuple[int | None, int]:
    """(column, row) on a 3x3 grid from words like "top left" or "bottom-center"."""
    words = re.findall(r"[a-z]+", position.lower())
    columns = [_COLUMN_WORDS[w] for w in words if w in _COLUMN_WORDS]
    rows = [_ROW_WORDS[w] for w in words if w in _ROW_WORDS]
    # "center left" means the left column: a side word wins over a centre word.
    column = min(columns, key=lambda c: c == 1) if columns else None
    return column, rows[0] if rows else 1


def _subject_boxes(subjects: Sequence[_Subject], area: Box, gap: int) -> list[Box]:
    """One box per subject: occupied grid rows share the height; a row's subjects sit in their
    columns, or side by side in column order when they collide."""
    cells = [_grid_position(s.position) for s in subjects]
    rows = sorted({row for _, row in cells})
    area_w, area_h = _size(area)
    row_h = (area_h + gap) // len(rows)
    boxes: list[Box] = [area] * len(subjects)
    for row_index, row in enumerate(rows):
        members = [i for i, (_, r) in enumerate(cells) if r == row]
        columns = [cells[i][0] for i in members]
        top = area[1] + row_index * row_h
        bottom = top + row_h - gap
        distinct = None not in columns and len(set(columns)) == len(columns)
        if len(members) == 1 and columns[0] is None:
            members_columns: list[tuple[int, float, float]] = [(members[0], 1 / 3, 2 / 3)]
        elif distinct:
            members_columns = [
                (i, c / 3, (c + 1) / 3) for i, c in zip(members, columns, strict=True) if c is not None
            ]
        else:
            ordered = sorted(members, key=lambda i: (cells[i][0] if cells[i][0] is not None else 1, i))
            share = 1 / len(ordered)
            members_columns = [(i, n * share, (n + 1) * share) for n, i in enumerate(ordered)]
        for index, start, end in members_columns:
            left = area[0] + round(start * (area_w + gap))
            right = area[0] + round(end * (area_w + gap)) - gap
            boxes[index] = (left, top, right, bottom)
    return boxes


def _paint_subjects(
    canvas: Image.Image,
    layout: _Layout,
    subjects: Sequence[_Subject],
    area: Box,
    scheme: _Scheme,
    rng: random.Random,
) -> None:
    face = _typeface()
    draw = ImageDraw.Draw(canvas)
    pad = max(4, round(layout.unit * 0.018))
    tag_size = max(10, round(layout.unit * 0.02))
    first_colour = rng.randrange(len(scheme.accents))
    cells = _subject_boxes(subjects, area, layout.gap)
    for index, (subject, cell) in enumerate(zip(subjects, cells, strict=True)):
        box = _jitter(cell, rng)
        box_w, box_h = _size(box)
        if min(box_w, box_h) < 16:
            continue
        fill = scheme.accents[(first_colour + index) % len(scheme.accents)]
        ink = _ink(fill)
        draw.rounded_rectangle(
            box, radius=min(pad, box_h // 4), fill=fill, outline=ink, width=max(1, pad // 4)
        )
        inset = max(3, min(pad, box_h // 8))
        _paint_subject_text(canvas, face, subject, index, box, inset, tag_size, ink)


def _jitter(cell: Box, rng: random.Random) -> Box:
    """The seed resizes and moves a block inside its cell, never out of it."""
    cell_w, cell_h = _size(cell)
    width = round(cell_w * rng.uniform(0.85, 1.0))
    height = round(cell_h * rng.uniform(0.85, 1.0))
    left = cell[0] + rng.randint(0, cell_w - width)
    top = cell[1] + rng.randint(0, cell_h - height)
    return (left, top, left + width, top + height)


def _paint_subject_text(
    canvas: Image.Image,
    face: Typeface,
    subject: _Subject,
    index: int,
    box: Box,
    pad: int,
    tag_size: int,
    ink: RGB,
) -> None:
    """The subject's lettering (its quoted text) large, its description, then a small line with
    its number, position and action; in a short block, the small line is what drops out."""
    inner_w = _size(box)[0] - 2 * pad
    room = _size(box)[1] - 2 * pad
    spacing = pad // 2
    body = max(11, round(tag_size * 1.6))
    meta = " · ".join(part for part in (f"subject {index + 1}", subject.position, subject.action) if part)
    # Keep a line for the meta so a long description cannot push it out.
    reserve = Typeface.line_height(tag_size) + spacing
    blocks: list[_Text] = []
    if subject.quoted and room - reserve > 0:
        lettering = " / ".join(subject.quoted)
        block = _fit(
            face, lettering, (inner_w, (room - reserve) // 3), (body * 3 // 2, tag_size), 2, bold=True
        )
        blocks.append(block)
        room -= block.height + spacing
    if subject.description:
        # In a short block the description wins and the small line drops out.
        share = room - reserve if room - reserve >= Typeface.line_height(tag_size) else room
        block = _fit(face, subject.description, (inner_w, share), (body, tag_size), 5)
        blocks.append(block)
        room -= block.height + spacing
    blocks.append(_fit(face, meta, (inner_w, max(room, 1)), (tag_size, tag_size), 2))
    x, y = box[0] + pad, box[1] + pad
    for block in blocks:
        if y + block.height > box[3] - pad:
            break
        _draw_text(canvas, face, block, (x, y), ink)
        y += block.height + spacing


# --- the whole picture -------------------------------------------------------------------------


def render(request: ImageRequest) -> bytes:
    """A layout preview of `request`, encoded as its output format; deterministic."""
    pil_format, options = _encoder(request.output_format)
    # A string seed is hashed with SHA-512 by `random`, so PYTHONHASHSEED cannot reach it.
    rng = random.Random(f"flexforge-draft:{request.seed}")
    brief = _read_brief(request)
    layout = _layout(request, rng)
    scheme = _scheme(brief.palette, rng)
    canvas = _paint_background(layout, scheme, rng)
    middle = layout.content
    if brief.headlines and _usable(middle):
        plate = _paint_headline(canvas, layout, brief, scheme)
        middle = (middle[0], plate[3] + layout.gap, middle[2], middle[3])
    if _usable(middle):
        caption = _paint_caption(canvas, layout, brief, scheme, middle)
        middle = (middle[0], middle[1], middle[2], caption[1] - layout.gap)
    if request.references and _usable(middle):
        # With no subjects to show, the references get the whole middle.
        references = middle
        if brief.subjects:
            references, middle = _split_references(layout, middle)
        _paint_references(canvas, layout, request, references, scheme)
    if brief.subjects and _usable(middle):
        _paint_subjects(canvas, layout, brief.subjects, middle, scheme, rng)
    _paint_footer(canvas, layout, request)
    buffer = io.BytesIO()
    canvas.save(buffer, pil_format, **options)
    return buffer.getvalue()


def _usable(box: Box) -> bool:
    return box[2] - box[0] >= 16 and box[3] - box[1] >= 16


def _split_references(layout: _Layout, area: Box) -> tuple[Box, Box]:
    """A strip for the references beside the subjects (landscape) or below them (portrait)."""
    area_w, area_h = _size(area)
    if area_w >= area_h:
        return _take_side(area, round(area_w * 0.28), layout.gap, layout.references_first)
    if layout.references_first:
        return _take_top(area, round(area_h * 0.3), layout.gap)
    return _take_bottom(area, round(area_h * 0.3), layout.gap)


def _encoder(output_format: str) -> tuple[str, dict[str, Any]]:
    try:
        return _ENCODERS[output_format]
    except KeyError:
        raise ValueError(f"unsupported output format {output_format!r}") from None
