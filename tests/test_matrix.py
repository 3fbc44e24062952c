"""Matrices and fragments: one declaration expands into the assets one would write by hand."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Project

MATRIX = """
version: 1
defaults: {width: 128, height: 128}
fragments:
  brand: "soft studio light, {tone} palette"
  palette: ["#112233", "#ffaa00"]
vars: {tone: warm}
axes:
  product:
    widget: {name: Widget, tagline: Fits in a pocket}
    gadget: {name: Gadget, tagline: Does it all}
assets:
  hero-{product}:
    matrix: {product: product}
    prompt: "{product.name} on a table, {@brand}"
  post-{product}-{channel}:
    matrix:
      product: product
      channel: [square, wide]
    prompt: "{product.name} ad ({channel}): {product.tagline}, {@brand}"
    references: ["hero-{product}"]
    out: social/{channel}/{product}.png
  card:
    prompt: {scene: "a card", color_palette: "{@palette}"}
"""

BY_HAND = """
version: 1
defaults: {width: 128, height: 128}
vars: {tone: warm}
assets:
  hero-widget: {prompt: "Widget on a table, soft studio light, {tone} palette"}
  hero-gadget: {prompt: "Gadget on a table, soft studio light, {tone} palette"}
  post-widget-square:
    prompt: "Widget ad (square): Fits in a pocket, soft studio light, {tone} palette"
    references: [hero-widget]
    out: social/square/widget.png
  post-widget-wide:
    prompt: "Widget ad (wide): Fits in a pocket, soft studio light, {tone} palette"
    references: [hero-widget]
    out: social/wide/widget.png
  post-gadget-square:
    prompt: "Gadget ad (square): Does it all, soft studio light, warm palette"
    references: [hero-gadget]
    out: social/square/gadget.png
  post-gadget-wide:
    prompt: "Gadget ad (wide): Does it all, soft studio light, warm palette"
    references: [hero-gadget]
    out: social/wide/gadget.png
  card:
    prompt: {scene: "a card", color_palette: ["#112233", "#ffaa00"]}
"""


def _keys(project: Project) -> dict[str, str]:
    return {i: e["key"] for i, e in project.lock()["assets"].items()}


def test_matrix_equals_hand_written_manifest_key_for_key(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.manifest(MATRIX)
    assert project.build().exit_code == 0
    by_matrix = _keys(project)
    assert len(by_matrix) == 7
    project.manifest(BY_HAND)
    # Copy-paste -> matrix (or back) regenerates nothing: every key is the same.
    assert set(project.plan().values()) == {"none"}
    assert project.build().exit_code == 0
    assert _keys(project) == by_matrix


def test_matrix_and_hand_written_projects_agree_from_scratch(tmp_path: Path) -> None:
    seeded = {"  hero-{product}:\n": "  hero-{product}:\n    seed: 7\n"}
    a, b = Project(tmp_path / "a"), Project(tmp_path / "b")
    text = MATRIX
    for old, new in seeded.items():
        text = text.replace(old, new)
    a.manifest(text)
    hand = BY_HAND.replace('  hero-widget: {prompt: "Widget', '  hero-widget: {seed: 7, prompt: "Widget')
    hand = hand.replace('  hero-gadget: {prompt: "Gadget', '  hero-gadget: {seed: 7, prompt: "Gadget')
    b.manifest(hand)
    for p in (a, b):
        assert p.build().exit_code == 0
    assert _keys(a)["hero-widget"] == _keys(b)["hero-widget"]
    assert a.read("assets/hero-gadget.png") == b.read("assets/hero-gadget.png")


def test_plan_explain_and_graph_show_the_expansion(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MATRIX)
    text = project.run("plan", "--provider", "draft").stdout
    assert "matrix post-{product}-{channel} (line 15) -> 4 assets" in text
    plan = project.run("plan", "--json", "--provider", "draft").json()
    row = next(a for a in plan["assets"] if a["id"] == "post-gadget-wide")
    assert row["matrix"] == "post-{product}-{channel} product=gadget channel=wide"
    explained = project.run("explain", "post-gadget-wide", "--provider", "draft").stdout
    assert "matrix    post-{product}-{channel} product=gadget channel=wide (flexforge.yaml:15)" in explained
    graph = project.run("graph", "--format", "json").json()
    assert graph["matrices"]["hero-{product}"] == ["hero-widget", "hero-gadget"]


def _errors(project: Project) -> list[str]:
    result = project.run("validate")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("flexforge.yaml:")]


def test_bad_matrices_are_located_errors_all_at_once(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        axes:
          color: [red, blue]
        assets:
          a-{color}:
            matrix: {color: colour}
            prompt: "x"
          b-{size}:
            matrix: {size: [Big, small]}
            prompt: "x"
          c:
            matrix: {color: color}
            prompt: "x"
          d-{color}:
            matrix: {color: color}
            prompt: "{color.name} {@missing}"
          e-{x}:
            prompt: "no matrix"
          f-{color}:
            matrix: {color: color}
            prompt: "fine"
            width: 100
        """
    )
    errors = _errors(project)
    joined = "\n".join(errors)
    assert "flexforge.yaml:6:" in joined and "unknown axis 'colour' (did you mean 'color'?)" in joined
    assert "flexforge.yaml:9:" in joined and "axis value 'Big'" in joined
    assert "flexforge.yaml:11:" in joined and "does not use axis {color}" in joined
    assert "unknown fragment {@missing}" in joined and "flexforge.yaml:16:" in joined
    assert "value 'red' of axis 'color' has no var 'name'" in joined
    assert "flexforge.yaml:17:" in joined and "has {...} but no `matrix:`" in joined
    # A cell's schema error points at the template's line.
    assert any(e.startswith("flexforge.yaml:22:") and "multiple of 16" in e for e in errors)


def test_matrix_cell_colliding_with_a_hand_written_asset_is_refused(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        assets:
          a-red: {prompt: "by hand"}
          a-{color}:
            matrix: {color: [red, blue]}
            prompt: "x"
        """
    )
    assert any(
        "the matrix makes 'a-red', which another asset already declares" in e for e in _errors(project)
    )


def test_fragment_cycle_and_structured_fragment_in_text_are_refused(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        fragments:
          a: "{@b}"
          b: "{@a}"
          pal: ["#000000"]
        assets:
          x: {prompt: "{@a}"}
          y: {prompt: "colours {@pal}"}
        """
    )
    joined = "\n".join(_errors(project))
    assert "fragment cycle: a -> b -> a" in joined
    assert "fragment 'pal' is structured" in joined


def test_a_matrix_too_big_is_refused_without_expanding_it(tmp_path: Path) -> None:
    project = Project(tmp_path)
    values = ", ".join(f"v{i}" for i in range(400))
    project.manifest(
        f"""
        version: 1
        axes:
          a: [{values}]
        assets:
          x-{{a}}-{{b}}-{{c}}:
            matrix: {{a: a, b: a, c: a}}
            prompt: "x"
        """
    )
    errors = _errors(project)
    assert any("the matrix makes 64000000 assets; at most 100000" in e for e in errors)


def test_a_big_matrix_points_each_cell_at_its_template_once() -> None:
    """Each cell's errors point at the template that made it, at a cost of one record a cell: a
    copy of the template's positions (with a 100-value axis) made a 100 x 10 matrix quadratic."""
    from flexforge.expand import expand
    from flexforge.yamlsource import parse_yaml

    products = "\n".join(f"        p{i:03d}: {{name: Product {i}}}" for i in range(100))
    text = (
        "version: 1\nassets:\n  ad-{product}-{channel}:\n    matrix:\n      product:\n"
        f"{products}\n      channel: [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9]\n"
        '    prompt: "{product.name} on {channel}"\n'
    )
    doc = parse_yaml(text.encode())
    expansion = expand(doc.data, doc, lambda *args, **kwargs: None)
    assert len(expansion.data["assets"]) == 1000
    assert len(doc.moved) == 1000
    assert (
        doc.key_where(("assets", "ad-p042-c7", "prompt"))[0]
        == text.splitlines().index('    prompt: "{product.name} on {channel}"') + 1
    )
