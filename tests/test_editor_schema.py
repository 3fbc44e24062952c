"""The draft-07 copy of the manifest schema: generated from the source, and judging alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flexforge.editor_schema import draft07, render, source
from flexforge.errors import FlexforgeError
from tests.helpers import Project

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "schemas" / "manifest-v1.draft-07.schema.json"


def test_the_committed_copy_is_what_the_generator_makes() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render("07"), (
        "schemas/manifest-v1.draft-07.schema.json is stale: run python scripts/make_editor_schema.py"
    )


def test_the_packaged_and_published_sources_agree() -> None:
    assert source() == json.loads((ROOT / "schemas" / "manifest-v1.schema.json").read_text())


def test_it_is_a_valid_draft07_schema_with_no_invented_urls() -> None:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "$defs" not in json.dumps(schema) and "flexforge.dev" not in json.dumps(schema)


def _verdicts(doc: Any) -> tuple[bool, bool]:
    new = jsonschema.Draft202012Validator(source()).is_valid(doc)
    old = jsonschema.Draft7Validator(draft07(source())).is_valid(doc)
    return new, old


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 1, "assets": {}},
        {"version": 1, "defaults": {"steps": 80}, "assets": {}},
        {"version": 1, "defaults": {"width": 100}, "assets": {}},
        {"version": 1, "assets": {"a": {"prompt": "x", "width": 1024, "seed": -1}}},
        {"version": 1, "assets": {"a": {"prompt": {"scene": "x"}, "references": ["b"]}}},
        {"version": 1, "assets": {"a": {"prompt": "x", "model": "flux-2-pro", "steps": 10}}},
        {"version": 1, "assets": {"Bad": {"prompt": "x"}}},
        {"version": 2, "assets": {}},
    ],
)
def test_both_drafts_judge_manifests_alike(doc: Any) -> None:
    new, old = _verdicts(doc)
    assert new == old


def test_the_example_project_is_valid_in_both() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "launch-kit" / "flexforge.yaml").read_text())
    assert _verdicts(doc) == (True, True)


def test_a_ref_with_siblings_keeps_them_in_draft07() -> None:
    converted = draft07(
        {"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/n", "minimum": 3}}}
    )
    assert converted["properties"]["x"] == {"minimum": 3, "allOf": [{"$ref": "#/definitions/n"}]}
    assert not jsonschema.Draft7Validator(converted).is_valid({"x": 1})


def test_keywords_draft07_lacks_are_refused() -> None:
    with pytest.raises(FlexforgeError, match="prefixItems"):
        draft07({"properties": {"x": {"prefixItems": []}}})


def test_schema_command_prints_and_writes(project: Project) -> None:
    printed = project.run("schema", "--draft", "07")
    assert printed.exit_code == 0 and json.loads(printed.stdout) == json.loads(render("07"))
    assert project.run("schema", "-o", str(project.root / "s.json")).exit_code == 0
    assert json.loads((project.root / "s.json").read_text()) == source()
