"""Issue 5, points 1, 2 and 6: property-based. Random edits of a valid manifest's text, and random
paths for `out:` and references, next to links that lead out of the root.

Whatever the input: `validate` and `plan` exit 0 or 1, never a traceback, every message located;
and when a manifest is accepted, its build writes nothing outside the project root.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Project, Run, png

LOCATED = re.compile(r"^flexforge\.yaml:\d+:\d+: ")
VALID = """\
version: 1
defaults: {width: 64, height: 64, steps: 20}
vars:
  brand: Northwind
assets:
  hero:
    prompt: "A poster for {brand} with the headline 'Brew bold'"
    seed: 42
  edit:
    prompt: "Image 1 in autumn colours, logo from image 2"
    references: [hero, brand/logo.png]
    out: site/img/edit.png
  shelf:
    model: flux-2-pro
    prompt:
      scene: "Coffee bags for {brand}"
      subjects: [{description: bag, position: center}]
      color_palette: ["#3B2A1A"]
    output_format: webp
"""
# Characters that YAML, paths and our vars give meaning to, and a few that nothing should.
ALPHABET = [
    *":-[]{},&*!|>'\"#%@`?\n\t {}./~$",
    "..",
    "{brand}",
    "{{",
    "<<",
    "é",
    "\u202e",
    "\x85",
    "9",
    "\\0",
    "\\",
]


def check(result: Run) -> None:
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if result.exit_code == 1:
        lines = result.stderr.strip().splitlines()
        assert lines[-1].endswith("in the manifest"), result.stderr
        assert all(LOCATED.match(line) for line in lines[:-1]), result.stderr


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=4).map("".join))
        span = draw(st.integers(1, 12))
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + span :]
        else:
            text = text[:at] + piece + text[at + span :]
    return text


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_edits_of_a_valid_manifest_never_crash(tmp_path: Path, text: str) -> None:
    project = Project(Path(tempfile.mkdtemp(dir=tmp_path)) / "mutated")
    png(project.root / "brand" / "logo.png", size=(32, 32))
    (project.root / "flexforge.yaml").write_text(text, encoding="utf-8")
    check(project.run("validate"))
    check(project.run("plan", "--provider", "draft"))


segments = st.sampled_from(
    ["a", "img", "..", ".", "", "escape", "inside", "link.png", "~", "C:", "é", " x", "\0", "\t"]
)
paths = st.lists(segments, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/etc/passwd", "//x.png", "img\\x.png", "escape/../img/x.png", "inside/../../x.png"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out=paths, ref=paths, ext=st.sampled_from([".png", ".jpg", ""]))
def test_random_paths_never_lead_out_of_the_root(tmp_path: Path, out: str, ref: str, ext: str) -> None:
    top = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis reuses tmp_path: one folder an example
    project = Project(top / "repo")
    root = project.root
    png(top / "outside.png", size=(32, 32))
    png(root / "img" / "ref.png", size=(32, 32))
    (root / "escape").symlink_to("..", target_is_directory=True)  # a link out of the root
    (root / "inside").symlink_to("img", target_is_directory=True)  # a link that stays inside
    (root / "link.png").symlink_to(top / "outside.png")
    before = sorted(os.listdir(top))
    project.write(
        "flexforge.yaml",
        "version: 1\ndefaults: {width: 64, height: 64}\nassets:\n"
        f"  a: {{prompt: x, seed: 1, out: {json.dumps(out + ext)}}}\n"  # JSON strings are YAML too
        f"  b: {{prompt: y, seed: 2, references: [{json.dumps(ref)}, img/ref.png]}}\n",
    )
    result = project.run("validate")
    check(result)
    check(project.run("plan", "--provider", "draft"))
    if result.exit_code == 0:
        built = project.run("build", "--provider", "draft")
        assert built.exit_code in (0, 1) and "Traceback" not in built.stderr, built.stderr
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert path.resolve().is_relative_to(root.resolve()), path
    assert sorted(os.listdir(top)) == before, "something was written next to the project"
