"""The model table is the one source: the schema's enum, the price table and the emulator agree."""

from __future__ import annotations

import json
from pathlib import Path

from flexforge import models
from flexforge.emulator import validation

ROOT = Path(__file__).resolve().parents[1]


def test_every_schema_model_enum_is_exactly_the_model_table() -> None:
    found = 0
    for path in sorted((ROOT / "schemas").glob("manifest-*.json")):  # the source and the draft-07 copy
        schema = json.loads(path.read_text(encoding="utf-8"))
        defs = schema.get("$defs") or schema["definitions"]
        assert defs["params"]["properties"]["model"]["enum"] == list(models.MODELS), path.name
        found += 1
    assert found >= 2


def test_every_model_has_a_price_row() -> None:
    table = json.loads((ROOT / "flexforge" / "data" / "pricing.json").read_text(encoding="utf-8"))
    priced = set(table["models"])
    assert {m.price_key for m in models.MODELS.values()} == priced


def test_the_emulator_serves_every_model_from_its_own_list() -> None:
    assert set(validation.MODELS) == set(models.MODELS)


def test_previews_take_what_their_model_takes() -> None:
    for model in models.MODELS.values():
        if model.preview_of is not None:
            base = models.get(model.preview_of)
            assert (model.knobs, model.max_references, model.price_key) == (
                base.knobs,
                base.max_references,
                base.price_key,
            )
            assert model.route == model.name != base.route


def test_upsampling_switches_follow_the_reference() -> None:
    switches = {name: m.upsampling for name, m in models.MODELS.items() if not m.preview_of}
    assert switches == {
        "flux-2-flex": "prompt_upsampling",
        "flux-2-pro": "disable_pup",
        "flux-2-max": "disable_pup",
        "flux-2-klein-4b": None,
        "flux-2-klein-9b": None,
    }
    assert models.get("flux-2-pro").max_reference_mp == 9.0


def test_only_flex_takes_steps_and_guidance() -> None:
    assert [m.name for m in models.MODELS.values() if m.flex_knobs] == [models.FLEX_MODEL]
    assert all(m.max_references in (4, 8) for m in models.MODELS.values())
