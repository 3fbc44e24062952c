"""The FLUX.2 models flexforge knows: one table the manifest, the key, the wire format, pricing and
its tests read, so a model's facts live in one place.

Standard library only. The emulator keeps its own copy on purpose: it stands in for the real API,
and must not agree with flexforge by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

FLEX_MODEL = "flux-2-flex"
# Knobs only flex takes: in `defaults` they apply to flex assets only and are never sent to others.
FLEX_ONLY = ("steps", "guidance", "prompt_upsampling")


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    max_references: int

    @property
    def flex(self) -> bool:
        return self.name == FLEX_MODEL


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model(FLEX_MODEL, 8),
        Model("flux-2-pro", 8),
        Model("flux-2-max", 8),
        Model("flux-2-klein-4b", 4),
        Model("flux-2-klein-9b", 4),
    )
}
MAX_REFERENCES = {name: m.max_references for name, m in MODELS.items()}
