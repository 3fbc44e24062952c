"""Cost estimates from the pricing table in `data/pricing.json` (data, not code).

BFL bills whole megapixels, rounded up per image, each reference counting at least 1 MP (the
table states the rule and its unit); CometAPI bills per request. Estimates only: the API's
reported `cost` is what the ledger records when there is one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_TABLE = Path(__file__).parent / "data" / "pricing.json"
PER_REQUEST_PROVIDERS = ("cometapi",)  # providers billed per request, with a table of their own


@dataclass(frozen=True, slots=True)
class ModelPrice:
    first_output_mp: float
    extra_output_mp: float
    input_mp: float


@dataclass(frozen=True, slots=True)
class Rounding:
    unit_pixels: int
    up: bool  # round each image's megapixels up to a whole number
    reference_minimum: float  # a reference counts as at least this many megapixels


@dataclass(frozen=True, slots=True)
class Table:
    credit_usd: float
    rounding: Rounding
    models: dict[str, ModelPrice]
    per_request: dict[str, dict[str, float]]  # provider -> model -> USD per request


@cache
def table() -> Table:
    raw: dict[str, Any] = json.loads(_TABLE.read_text(encoding="utf-8"))
    mp = raw["megapixels"]
    rounding = Rounding(int(mp["unit_pixels"]), mp["rounding"] == "up", float(mp["reference_minimum"]))
    models = {name: ModelPrice(**fields) for name, fields in raw["models"].items()}
    per_request = {p: dict(raw[p]["models"]) for p in PER_REQUEST_PROVIDERS if p in raw}
    return Table(float(raw["credit_usd"]), rounding, models, per_request)


def megapixels(width: int, height: int) -> float:
    """Exact megapixels, in the table's unit."""
    return width * height / table().rounding.unit_pixels


def billed_mp(width: int, height: int, *, reference: bool = False) -> float:
    """The megapixels one image is billed as."""
    rule = table().rounding
    value = megapixels(width, height)
    if rule.up:
        value = float(math.ceil(value - 1e-9))
    return max(value, rule.reference_minimum) if reference else value


def _price_key(model: str) -> str:
    from flexforge.models import MODELS

    spec = MODELS.get(model)
    return spec.price_key if spec is not None else model


def per_request_usd(model: str, provider: str) -> float | None:
    """The provider's own per-request price for `model`, when it bills that way and publishes one."""
    prices = table().per_request.get(provider, {})
    price = prices.get(_price_key(model))
    return None if price is None else float(price)


def estimate_usd(
    model: str,
    width: int,
    height: int,
    input_sizes: Iterable[tuple[int, int]] = (),
    provider: str = "bfl",
) -> float:
    """Estimated price of one generation on `provider`: per request where the provider bills
    that way, else BFL's rule: output megapixels plus each reference's megapixels, rounded."""
    flat = per_request_usd(model, provider)
    if flat is not None:
        return flat
    price = table().models.get(_price_key(model))
    if price is None:
        return 0.0
    out_mp = billed_mp(width, height)
    cost = price.first_output_mp + max(0.0, out_mp - 1.0) * price.extra_output_mp
    cost += sum(billed_mp(w, h, reference=True) for w, h in input_sizes) * price.input_mp
    return round(cost, 6)


def price_basis(model: str, provider: str) -> str:
    """How an estimate for `model` on `provider` was made, for messages."""
    if per_request_usd(model, provider) is not None:
        return f"{provider} per request"
    if provider in PER_REQUEST_PROVIDERS:
        return f"BFL's per-megapixel table (no {provider} price known for {model})"
    return "BFL's per-megapixel table"


def credits_to_usd(credits: float) -> float:
    return round(credits * table().credit_usd, 6)
