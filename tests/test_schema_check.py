"""The compiled yes/no schema check: current, never laxer than jsonschema, and invisible in the
answers validation gives (the same manifests, the same located errors, all at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexforge import manifest as manifest_module
from flexforge import schema_check
from flexforge.editor_schema import source
from flexforge.errors import ManifestError
from flexforge.manifest import SCHEMA_PATH, load_manifest
from tests.helpers import Project, png

SLOW = jsonschema.Draft202012Validator(source())


def test_the_committed_compiled_check_is_what_the_generator_makes() -> None:
    import fastjsonschema

    from flexforge import _schema_compiled

    stale = "flexforge/_schema_compiled.py is stale: run python scripts/make_editor_schema.py"
    made_from = _schema_compiled.SCHEMA_SHA256
    assert made_from == schema_check.schema_digest(SCHEMA_PATH.read_bytes()), stale
    if _schema_compiled.VERSION == fastjsonschema.VERSION:  # another release writes other code
        assert schema_check.GENERATED.read_text(encoding="utf-8") == schema_check.generate(), stale


def test_a_compiled_check_made_from_another_schema_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from flexforge import _schema_compiled

    schema_check._compiled.cache_clear()
    monkeypatch.setattr(_schema_compiled, "SCHEMA_SHA256", "0" * 64)
    try:
        assert schema_check._compiled() is None
        assert not schema_check.accepts({"version": 1, "assets": {"a": {"prompt": "x"}}})
    finally:
        schema_check._compiled.cache_clear()


def test_a_float_multiple_of_is_refused_at_generation() -> None:
    # fastjsonschema and jsonschema disagree on float remainders (0.3 / 0.1): no guessing.
    with pytest.raises(ValueError, match="multipleOf"):
        schema_check._stricter({"properties": {"g": {"multipleOf": 0.1}}})


def test_prose_is_left_out_of_the_compiled_form() -> None:
    stricter = schema_check._stricter({"description": "d", "properties": {"description": {"type": "string"}}})
    assert stricter == {"properties": {"description": {"type": "string"}}}


def test_tuples_are_left_to_jsonschema() -> None:
    # fastjsonschema takes a tuple for an array; jsonschema does not.
    assert not schema_check.accepts({"version": 1, "assets": {"a": {"prompt": "x", "tags": ("t",)}}})
    assert schema_check.accepts({"version": 1, "assets": {"a": {"prompt": "x", "tags": ["t"]}}})


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, 16, 64, 63, 1024, 4294967295, 4294967296, 2**70]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 64.0, 64.5, 1.5, 1.4999, 10.0, 10.5, 1e20, -0.0, 20.0, 0.5]),
    st.text(max_size=6),
    st.sampled_from(
        ["", "x", "a\n", "1024x768", "1024x768\n", "#ffffff", "#fff", "#ffffff\n", "png", "jpeg", "gif"]
    ),
    st.sampled_from(["flux-2-flex", "flux-2-pro", "flux-2-klein-4b", "cover", "top-left", "draft"]),
    st.lists(st.sampled_from(["a", "", "t-1", "b\n", 3, True]), max_size=3),
    st.dictionaries(
        st.sampled_from(["scene", "style", "x", "file", "text"]), st.text(max_size=3), max_size=2
    ),
)
ASSET_KEYS = [
    "prompt", "model", "width", "height", "steps", "guidance", "output_format", "safety_tolerance",
    "prompt_upsampling", "seed", "references", "out", "final_size", "reference_max_mp", "size", "tags",
    "matrix", "from", "fit", "background", "quality", "logo", "text", "max_cost_usd", "variants", "pick",
    "unknown",
]  # fmt: skip
ASSETS = st.dictionaries(st.sampled_from(ASSET_KEYS), ODD_VALUES, max_size=5)
IDS = st.sampled_from(["a", "b-1", "Bad", "x.y", "{color}", "a\n", "0"])
SECTIONS = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1.0, True, 2, "1"]), "assets": st.dictionaries(IDS, ASSETS, max_size=3)},
    optional={
        "defaults": st.dictionaries(st.sampled_from(ASSET_KEYS[1:10]), ODD_VALUES, max_size=3),
        "vars": st.dictionaries(st.sampled_from(["brand", "b c", "x\n"]), ODD_VALUES, max_size=2),
        "settings": st.dictionaries(st.sampled_from(["provider", "jobs", "max_cost_usd"]), ODD_VALUES),
    },
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=SECTIONS)
def test_the_compiled_check_never_accepts_what_jsonschema_refuses(doc: dict[str, Any]) -> None:
    if schema_check.accepts(doc):
        assert SLOW.is_valid(doc), list(SLOW.iter_errors(doc))[:1]


@settings(max_examples=300, deadline=None)
@given(
    asset=st.fixed_dictionaries(
        {"prompt": st.sampled_from(["x", "a poster"])},
        optional={
            "width": st.sampled_from([64, 1024, 2048, 64.0]),
            "steps": st.integers(1, 50),
            "guidance": st.floats(1.5, 10),
            "seed": st.integers(0, 4294967295),
            "tags": st.lists(st.sampled_from(["hero", "v2.1", "a_b"]), max_size=2),
            "final_size": st.sampled_from(["1080x1080", "64x64"]),
        },
    )
)
def test_the_compiled_check_accepts_ordinary_manifests(asset: dict[str, Any]) -> None:
    # The fast path must actually be taken for the manifests people write, or it buys nothing.
    doc = {"version": 1, "defaults": {"model": "flux-2-flex"}, "assets": {"hero": asset}}
    assert SLOW.is_valid(doc)
    assert schema_check.accepts(doc)


INVALID = """
version: 1
defaults:
  steps: 80
  colour: red
assets:
  Hero:
    prompt: ""
  ok:
    prompt: "fine"
    width: 100
    seed: -3
    tags: ["bad tag"]
  other:
    prompt: {scene: x, weather: rain}
    references: [missing.png]
"""

VALID = """
version: 1
defaults: {model: flux-2-flex, steps: 30}
vars: {brand: Northwind}
assets:
  hero: {prompt: "A poster for {brand}", seed: 7, width: 1024, height: 768, references: [ref.png]}
  shelf:
    prompt: {scene: shelf, color_palette: ["#3B2A1A"]}
    model: flux-2-pro
    references: [hero]
    out: site/shelf.webp
    output_format: webp
"""


def _load_both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """load_manifest's answer with the compiled check, and with jsonschema alone."""

    def answer() -> Any:
        try:
            return load_manifest(path, "flexforge.yaml")
        except ManifestError as exc:
            return [str(d) for d in exc.diagnostics]

    fast = answer()
    with monkeypatch.context() as m:
        m.setattr(schema_check, "accepts", lambda data: False)
        slow = answer()
    return fast, slow


def test_an_invalid_manifest_gets_the_same_located_errors_all_at_once(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project.manifest(INVALID)
    monkeypatch.setenv("FLEXFORGE_CACHE_DIR", str(project.root / "cache"))
    fast, slow = _load_both_ways(path, monkeypatch)
    assert fast == slow
    assert len(fast) >= 7 and all(line.startswith("flexforge.yaml:") for line in fast)


def test_a_valid_manifest_is_the_same_either_way(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    png(project.root / "ref.png")
    path = project.manifest(VALID)
    monkeypatch.setenv("FLEXFORGE_CACHE_DIR", str(project.root / "cache"))
    monkeypatch.setattr(manifest_module, "_read_cache", lambda *args: None)
    called: list[bool] = []
    real = schema_check.accepts

    def spy(data: Any) -> bool:
        called.append(True)
        return real(data)

    monkeypatch.setattr(schema_check, "accepts", spy)
    fast, slow = _load_both_ways(path, monkeypatch)
    assert called and fast == slow and list(fast.assets) == ["hero", "shelf"]
