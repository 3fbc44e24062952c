"""Rewrite schemas/manifest-v1.draft-07.schema.json and flexforge/_schema_compiled.py from the
2020-12 source (run after editing it)."""

from __future__ import annotations

from pathlib import Path

from flexforge.editor_schema import render
from flexforge.schema_check import GENERATED, generate

TARGET = Path(__file__).resolve().parent.parent / "schemas" / "manifest-v1.draft-07.schema.json"

if __name__ == "__main__":
    TARGET.write_text(render("07"), encoding="utf-8")
    print(f"wrote {TARGET}")
    GENERATED.write_text(generate(), encoding="utf-8")
    print(f"wrote {GENERATED}")
