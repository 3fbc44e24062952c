"""What one asset asks of a generator: the resolved request every provider receives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexforge.models import FLEX_MODEL


@dataclass(frozen=True, slots=True)
class ReferenceInput:
    """One reference image, in the order the prompt calls them ("image 1", "image 2", ...)."""

    label: str  # as written in the manifest: an asset id or a path relative to the root
    path: Path  # absolute path of the bytes to send
    sha256: str


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A fully resolved generation request; knobs its model does not take are None."""

    asset_id: str
    model: str
    prompt: str  # exactly as sent: a structured prompt is already serialized to JSON text
    width: int
    height: int
    seed: int
    output_format: str  # png | jpeg | webp
    safety_tolerance: int
    steps: int | None = None
    guidance: float | None = None
    prompt_upsampling: bool | None = None
    references: tuple[ReferenceInput, ...] = ()
    # The structured prompt as declared (after vars), for renderers that read its fields.
    structured: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def is_flex(self) -> bool:
        return self.model == FLEX_MODEL
