"""Cost estimates from the pricing table in `data/pricing.json` (data, not code)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_TABLE = Path(__file__).parent / "data" / "pricing.json"
CREDIT_USD = 0.01  # 1 API credit = US$0.01


@dataclass(frozen=True, slots=True)
class ModelPrice:
    first_output_mp: float
    extra_output_mp: float
    input_mp: float


@cache
def _table() -> tuple[dict[str, ModelPrice], str]:
    raw = json.loads(_TABLE.read_text(encoding="utf-8"))
    prices = {name: ModelPrice(**fields) for name, fields in raw["models"].items()}
    return prices, raw.get("megapixel_rounding", "none")


def megapixels(width: int, height: int) -> float:
    return width * height / 1_000_000


def estimate_usd(model: str, width: int, height: int, input_sizes: Iterable[tuple[int, int]] = ()) -> float:
    """Estimated price of one generation: output megapixels plus reference megapixels."""
    from flexforge.models import MODELS

    prices, rounding = _table()
    spec = MODELS.get(model)
    price = prices.get(spec.price_key if spec is not None else model)
    if price is None:
        return 0.0

    def mp(w: int, h: int) -> float:
        value = megapixels(w, h)
        return float(math.ceil(value)) if rounding == "ceil" else value

    out_mp = mp(width, height)
    in_mp = sum(mp(w, h) for w, h in input_sizes)
    cost = price.first_output_mp + max(0.0, out_mp - 1.0) * price.extra_output_mp
    cost += in_mp * price.input_mp
    return round(cost, 6)


def credits_to_usd(credits: float) -> float:
    return round(credits * CREDIT_USD, 6)
