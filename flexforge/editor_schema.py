"""The manifest's JSON Schema for editors: the 2020-12 source, or a draft-07 copy derived from it.

yaml-language-server (VS Code's YAML extension, and editors built on it) and SchemaStore work
best with draft-07, so the copy is generated from the one source, never edited by hand:
`python scripts/make_editor_schema.py` rewrites `schemas/manifest-v1.draft-07.schema.json`, and a
test checks that the committed copy is what this module makes.
"""

from __future__ import annotations

import json
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.manifest import SCHEMA_PATH

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
DRAFTS = ("2020-12", "07")
# Keywords draft-07 does not know: a source using them cannot be translated by renaming.
_NEWER = {
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "minContains",
    "maxContains",
}


def source() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def draft07(schema: dict[str, Any]) -> dict[str, Any]:
    """The same rules in draft-07: `$defs` become `definitions`, and a `$ref` with siblings is
    wrapped in `allOf`, since draft-07 ignores everything beside a `$ref`."""
    out = _convert(schema, top=True)
    out["$schema"] = DRAFT_07
    return {k: out[k] for k in sorted(out, key=_order)}


def _order(key: str) -> tuple[int, str]:
    return ({"$schema": 0, "$id": 1, "title": 2, "description": 3}.get(key, 9), "")


def _convert(node: Any, *, top: bool = False) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    newer = _NEWER & node.keys()
    if newer or ("$defs" in node and not top):
        raise FlexforgeError(
            f"the manifest schema uses {sorted(newer) or ['nested $defs']}: no draft-07 form"
        )
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            out["definitions"] = {name: _convert(sub) for name, sub in value.items()}
        elif key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/$defs/", "#/definitions/")
        elif key in ("properties", "patternProperties"):
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        else:
            out[key] = _convert(value)
    if "$ref" in out and len(out) > 1 and not top:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}, *out.get("allOf", [])]
    return out


def render(draft: str = "2020-12") -> str:
    if draft not in DRAFTS:
        raise FlexforgeError(f"--draft {draft}: choose one of {', '.join(DRAFTS)}")
    schema = source() if draft == "2020-12" else draft07(source())
    return json.dumps(schema, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
