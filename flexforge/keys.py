"""Content keys: a digest of everything that can change an asset's pixels, and its named parts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flexforge.manifest import Asset
from flexforge.models import FLEX_KNOBS, UPSAMPLING, takes

KEY_VERSION = 1
# The order in which reasons are reported.
PARTS = ("prompt", "params", "seed", "model", "references", "upstream")


class ContentKey:
    """The key of one asset; its named parts are derived only when a change must be explained,
    since a no-op plan computes a thousand keys and needs none of their parts."""

    __slots__ = ("_inputs", "_parts", "key")

    def __init__(self, key: str, inputs: dict[str, Any]) -> None:
        self.key = key
        self._inputs = inputs
        self._parts: dict[str, str] | None = None

    @property
    def parts(self) -> dict[str, str]:
        """Part name -> short digest, stored in the lock to say later which part changed."""
        if self._parts is None:
            full = self._inputs
            self._parts = _parts(
                full["prompt"],
                full["params"],
                full["seed"],
                full["generator"],
                full["model"],
                full["files"],
                full["upstream"],
            )
        return self._parts

    @property
    def files(self) -> list[str]:
        """The sha256 of each reference file (not asset references), in manifest order."""
        files: list[str] = self._inputs["files"]
        return files

    def changed_parts(self, old_parts: dict[str, str]) -> list[str]:
        return changed(self.parts, old_parts)


def changed(new_parts: dict[str, str], old_parts: dict[str, str]) -> list[str]:
    """The parts that differ, in PARTS order; a change of generator alone (`draft:flux-2-flex`
    -> `flux:flux-2-flex`) reads `generator: draft -> flux`, since the model did not change."""
    reasons = []
    for part in PARTS:
        new, old = new_parts.get(part), old_parts.get(part)
        if new == old:
            continue
        if part == "model" and new is not None and old is not None:
            new_gen, _, new_model = new.partition(":")
            old_gen, _, old_model = old.partition(":")
            if new_model == old_model and new_gen != old_gen:
                reasons.append(f"generator: {old_gen} -> {new_gen}")
                continue
        reasons.append(part)
    return reasons


def _parts(
    prompt: str,
    params: dict[str, Any],
    seed: int | None,
    generator: str,
    model: str,
    files: list[str | None],
    upstream: list[str | None],
) -> dict[str, str]:
    return {
        "prompt": _digest(prompt)[:16],
        "params": _digest(params)[:16],
        "seed": str(seed),
        "model": f"{generator}:{model}",
        "references": _digest(files)[:16],
        "upstream": _digest(upstream)[:16],
    }


def known_parts(
    asset: Asset, generator: str, seed: int | None, reference_digests: list[str | None]
) -> dict[str, str]:
    """The key parts that can be told while a seed or an upstream output is still unknown
    (None): enough to say which parts changed before the key itself can be computed."""
    pairs = list(zip(asset.references, reference_digests, strict=True))
    files = [d for ref, d in pairs if ref not in asset.asset_refs]
    upstream = [d for ref, d in pairs if ref in asset.asset_refs]
    return _parts(asset.prompt, request_params(asset), seed, generator, asset.model, files, upstream)


# json.dumps with these options, made once: dumps builds an encoder on every call otherwise.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(_CANONICAL.encode(value).encode()).hexdigest()


def request_params(asset: Asset) -> dict[str, Any]:
    """The request parameters that shape pixels, as they will be sent (knobs only for the models
    that take them: flex's steps and guidance; upsampling for flex, pro and max)."""
    params: dict[str, Any] = {
        "width": asset.width,
        "height": asset.height,
        "safety_tolerance": asset.safety_tolerance,
        "output_format": asset.output_format,
    }
    for knob in (*FLEX_KNOBS, UPSAMPLING):
        if takes(asset.model, knob):
            params[knob] = getattr(asset, knob)
    if asset.final_size is not None:
        params["final_size"] = list(asset.final_size)
    if asset.reference_max_mp is not None:
        params["reference_max_mp"] = asset.reference_max_mp
    return params


def content_key(asset: Asset, generator: str, seed: int, reference_digests: list[str]) -> ContentKey:
    """`reference_digests` are the sha256 of each reference's bytes, in manifest order; for an
    asset reference, of that asset's current output."""
    full = {
        "v": KEY_VERSION,
        "generator": generator,
        "model": asset.model,
        "prompt": asset.prompt,
        "params": request_params(asset),
        "seed": seed,
        "references": reference_digests,
    }
    key = _digest(full)
    pairs = list(zip(asset.references, reference_digests, strict=True))
    full["files"] = [d for ref, d in pairs if ref not in asset.asset_refs]
    full["upstream"] = [d for ref, d in pairs if ref in asset.asset_refs]
    return ContentKey(key, full)
