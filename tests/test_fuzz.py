"""Property-based: any manifest, valid or broken, gets exit 0 or 1 with located messages."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Project

LOCATED = re.compile(r"^flexforge\.yaml:\d+:\d+: ")
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,8}", fullmatch=True) | st.sampled_from(["Hero", "", "a b", "é"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["{brand}", "{{", "}", "{nope}", "../x.png", "/etc/passwd"]),
)
params = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["flux-2-flex", "flux-2-pro", "flux-2-klein-4b", "flux-3"]) | scalars,
        "width": st.sampled_from([64, 1024, 1000, 8192, 0]) | scalars,
        "height": st.sampled_from([64, 768, 17]) | scalars,
        "steps": st.integers(-5, 80) | scalars,
        "guidance": st.floats(0, 20, allow_nan=False) | scalars,
        "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]) | scalars,
        "safety_tolerance": st.integers(-1, 7) | scalars,
        "prompt_upsampling": st.booleans() | scalars,
    },
)


@st.composite
def manifests(draw: st.DrawFn) -> object:
    names = draw(st.lists(ids, max_size=5, unique=True))
    assets = {}
    for name in names:
        asset = draw(params)
        asset["prompt"] = draw(
            st.text(max_size=40)
            | st.fixed_dictionaries(
                {},
                optional={
                    "scene": scalars,
                    "color_palette": st.lists(scalars, max_size=3),
                    "subjects": st.lists(st.dictionaries(st.text(max_size=5), scalars), max_size=2),
                    "scnee": scalars,
                },
            )
            | scalars
        )
        if draw(st.booleans()):
            asset["references"] = draw(
                st.lists(st.sampled_from([*names, "ref.png", "missing.png", "../up.png"]), max_size=9)
            )
        if draw(st.booleans()):
            asset["seed"] = draw(st.integers(-1, 2**33) | scalars)
        if draw(st.booleans()):
            asset["out"] = draw(
                st.sampled_from(["a.png", "x/y.jpg", "../z.png", "/abs.png", "{brand}.png"]) | scalars
            )
        assets[name] = asset
    doc = {"version": draw(st.sampled_from([1, 1, 1, 2, "1"])), "assets": assets}
    if draw(st.booleans()):
        doc["defaults"] = draw(params)
    if draw(st.booleans()):
        doc["vars"] = draw(st.dictionaries(st.sampled_from(["brand", "x", "bad name"]), scalars, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        return draw(scalars | st.lists(scalars, max_size=3))
    return doc


def check(project: Project) -> None:
    for command in (["validate"], ["plan", "--provider", "draft"]):
        result = project.run(*command)
        assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        if result.exit_code == 1:
            lines = result.stderr.strip().splitlines()
            assert lines[-1].endswith("in the manifest"), result.stderr
            assert all(LOCATED.match(line) for line in lines[:-1]), result.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=manifests())
def test_generated_manifests_never_crash(tmp_path: Path, doc: object) -> None:
    project = Project(tmp_path / "fuzz")
    (project.root / "ref.png").write_bytes(Path(__file__).with_name("conftest.py").read_bytes()[:10])
    (project.root / "flexforge.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    check(project)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_never_crash(tmp_path: Path, raw: bytes) -> None:
    project = Project(tmp_path / "bytes")
    (project.root / "flexforge.yaml").write_bytes(raw)
    check(project)
