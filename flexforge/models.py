"""The FLUX.2 models flexforge speaks to: routes, knobs, limits and price keys, as one table.

Data, not code, and stdlib only: the manifest's checks, the JSON Schema's model enum (pinned by a
test), the wire format, pricing and the test helpers all read this table. The emulator keeps its
own independent copy (`flexforge/emulator/validation.py`) on purpose, so that a mistake here is
caught by the emulator rather than shared with it. Facts and their sources:
`../shared/reference/bfl-api.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

# How a model is told not to rewrite the prompt with an LLM ("prompt upsampling"):
#   "prompt_upsampling": flex takes `prompt_upsampling: bool` (API default true);
#   "disable_pup": pro and max take `disable_pup: true` to switch it off (API default: on);
#   None: klein has no switch (and may refuse either field).
UpsamplingSwitch = Literal["prompt_upsampling", "disable_pup"]

FLEX_KNOBS = ("steps", "guidance")  # knobs only flex takes
UPSAMPLING: Final = "prompt_upsampling"  # the manifest's knob, whatever the model's wire field


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # as written in manifests and locks
    route: str  # submit is POST {base}{prefix}/{route}
    max_references: int
    # Megapixels of all references together, when the API caps them (pro: 9 MP); None: each
    # reference's own limit (20 MP) is all that is known.
    max_reference_mp: float | None
    flex_knobs: bool  # takes `steps` and `guidance`
    upsampling: UpsamplingSwitch | None
    price_key: str  # the row of data/pricing.json that prices it
    preview_of: str | None = None  # a preview route: the model it previews ("improvements land first")

    @property
    def knobs(self) -> tuple[str, ...]:
        """The manifest knobs this model takes beyond the common ones."""
        return (*(FLEX_KNOBS if self.flex_knobs else ()), *((UPSAMPLING,) if self.upsampling else ()))


def _preview(of: Model) -> Model:
    name = f"{of.name}-preview"
    return replace(of, name=name, route=name, preview_of=of.name)


_FLEX = Model("flux-2-flex", "flux-2-flex", 8, None, True, UPSAMPLING, "flux-2-flex")
_PRO = Model("flux-2-pro", "flux-2-pro", 8, 9.0, False, "disable_pup", "flux-2-pro")
_MAX = Model("flux-2-max", "flux-2-max", 8, None, False, "disable_pup", "flux-2-max")
# BFL's SDK lets klein 9B take 5 references; the docs say 4: the documented limit is kept.
_KLEIN_4B = Model("flux-2-klein-4b", "flux-2-klein-4b", 4, None, False, None, "flux-2-klein-4b")
_KLEIN_9B = Model("flux-2-klein-9b", "flux-2-klein-9b", 4, None, False, None, "flux-2-klein-9b")

MODELS: dict[str, Model] = {
    m.name: m for m in (_FLEX, _PRO, _MAX, _KLEIN_4B, _KLEIN_9B, _preview(_PRO), _preview(_KLEIN_9B))
}
FLEX_MODEL = "flux-2-flex"
DEFAULT_MODEL = FLEX_MODEL

# What flexforge sends when the manifest says nothing. The guidance default is BFL's docs' 4.5
# (their OpenAPI spec says 5.0): it is always sent explicitly, so the API's own never applies.
DEFAULTS: dict[str, object] = {
    "model": DEFAULT_MODEL,
    "width": 1024,
    "height": 1024,
    "steps": 50,
    "guidance": 4.5,
    "output_format": "png",
    "safety_tolerance": 2,
    "prompt_upsampling": False,
}
MAX_PIXELS = 2048 * 2048  # the API's 4 MP output limit


def get(name: str) -> Model:
    """The model named `name`; KeyError for an unknown one (validation refuses those first)."""
    return MODELS[name]


def takes(model: str, knob: str) -> bool:
    """Whether `model` takes the manifest knob `knob` (unknown models take none)."""
    found = MODELS.get(model)
    return found is not None and knob in found.knobs
