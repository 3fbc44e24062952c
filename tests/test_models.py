"""One model table: the schema, the pricing data and the emulator agree with flexforge/models.py."""

from __future__ import annotations

import json
from pathlib import Path

import flexforge
from flexforge.manifest import SCHEMA_PATH
from flexforge.models import FLEX_MODEL, MODELS

DATA = Path(flexforge.__file__).parent / "data" / "pricing.json"


def test_schema_enum_and_pricing_name_exactly_the_known_models() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    enum = schema["$defs"]["params"]["properties"]["model"]["enum"]
    assert sorted(enum) == sorted(MODELS)
    assert sorted(json.loads(DATA.read_text())["models"]) == sorted(MODELS)


def test_only_flex_is_flex() -> None:
    assert [m.name for m in MODELS.values() if m.flex] == [FLEX_MODEL]
    assert all(m.max_references in (4, 8) for m in MODELS.values())
