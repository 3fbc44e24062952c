"""Channel size presets: the shipped catalog (data/presets.json) plus a project's own, and the
rule that turns a delivered size into the size FLUX.2 generates."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).parent / "data" / "presets.json"
SIZE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})\Z")
MAX_PIXELS = 2048 * 2048
MAX_SIDE = 2048  # wrappers cap each side; the API documents 4 MP in total
MIN_SIDE = 64
# Sizes whose aspect is within this of the delivered one count as equally close: the smallest wins.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    delivered: tuple[int, int]
    generated: tuple[int, int]
    label: str = ""


def generated_size(width: int, height: int) -> tuple[int, int]:
    """The size to generate for a delivery of width x height: multiples of 16, within 4 MP and
    2048 a side, covering the delivery when it can, with the closest aspect (within 1% the
    smallest such size, so no pixels are paid for twice)."""
    target = math.log(width / height)
    best: tuple[float, int, int, int] | None = None
    candidates: list[tuple[float, int, int, int]] = []
    for w in range(MIN_SIDE, MAX_SIDE + 1, 16):
        for h in range(MIN_SIDE, MAX_SIDE + 1, 16):
            if w * h > MAX_PIXELS:
                break
            error = abs(math.log(w / h) - target)
            covers = w >= width and h >= height
            candidates.append((error, w * h, w, h) if covers else (error + 10.0, w * h, w, h))
    best = min(candidates)
    close = [c for c in candidates if c[0] <= best[0] + ASPECT_TOLERANCE]
    _, _, w, h = min(close, key=lambda c: (c[1], c[0]))
    return w, h


def parse_size(text: str) -> tuple[int, int] | None:
    match = SIZE.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@cache
def catalog() -> dict[str, Preset]:
    """The shipped presets, by name."""
    doc = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    return {name: _preset(name, raw) for name, raw in doc["presets"].items()}


def catalog_version() -> int:
    return int(json.loads(CATALOG_PATH.read_text(encoding="utf-8"))["version"])


def _preset(name: str, raw: dict[str, Any]) -> Preset:
    delivered = tuple(raw["size"])
    generated = tuple(raw["generate"])
    return Preset(name, (delivered[0], delivered[1]), (generated[0], generated[1]), raw.get("label", ""))


def project_preset(name: str, raw: dict[str, Any]) -> Preset | str:
    """A preset from the manifest's `presets:` block, or why it is refused."""
    delivered = parse_size(str(raw.get("size", "")))
    if delivered is None:
        return f"size {raw.get('size')!r} is not WxH (e.g. 1200x628)"
    if "generate" in raw:
        generated = parse_size(str(raw["generate"]))
        if generated is None:
            return f"generate {raw['generate']!r} is not WxH (e.g. 1216x640)"
        w, h = generated
        if w % 16 or h % 16 or w * h > MAX_PIXELS or min(w, h) < MIN_SIDE:
            return f"generate {raw['generate']} must be multiples of 16, at least 64, within 4 MP"
        if w < delivered[0] or h < delivered[1]:
            return f"generate {raw['generate']} is smaller than the delivered {raw['size']}"
    else:
        generated = generated_size(*delivered)
    return Preset(name, delivered, generated, str(raw.get("label", "")))
