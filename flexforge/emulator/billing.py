"""What the emulated API charges for a task: BFL's documented rule, and CometAPI's per request.

Written from `../shared/reference/bfl-api.md` apart from `flexforge/pricing.py` on purpose: the
client's estimate is checked against this bill (tests, `benchmarks/run.py`), so the two must not
share a mistake. The rule: whole megapixels (10^6 pixels), rounded up per image; the first
output megapixel at one price, each further one and each reference megapixel at another; a
reference counts as at least 1 MP.
"""

from __future__ import annotations

import math

# model -> (first output MP, each further output MP, each reference MP), US$
BFL_USD = {
    "flux-2-flex": (0.05, 0.05, 0.05),
    "flux-2-pro": (0.03, 0.015, 0.015),
    "flux-2-max": (0.07, 0.03, 0.03),
    "flux-2-klein-4b": (0.014, 0.001, 0.001),
    "flux-2-klein-9b": (0.015, 0.002, 0.002),
}
COMET_USD_PER_REQUEST = {"flux-2-flex": 0.008}
CREDITS_PER_USD = 100
PIXELS_PER_MP = 1_000_000


def whole_mp(size: tuple[int, int] | None, *, at_least: int = 0) -> int:
    """An image's billed megapixels; a reference given by URL (size unknown) bills the minimum."""
    if size is None:
        return at_least
    return max(at_least, math.ceil(size[0] * size[1] / PIXELS_PER_MP))


def credits(
    model: str, width: int, height: int, references: list[tuple[int, int] | None], *, comet: bool = False
) -> float:
    """The task's price in credits (1 credit = US$0.01)."""
    base = model.removesuffix("-preview")
    if comet and base in COMET_USD_PER_REQUEST:
        return round(COMET_USD_PER_REQUEST[base] * CREDITS_PER_USD, 4)
    first, further, per_input = BFL_USD[base]
    usd = first + (whole_mp((width, height)) - 1) * further
    usd += sum(whole_mp(size, at_least=1) for size in references) * per_input
    return round(usd * CREDITS_PER_USD, 4)
