"""`flexforge validate`: every kind of error, located, all at once, never a traceback."""

from __future__ import annotations

import zlib

import pytest

from flexforge.manifest import load_manifest
from tests.helpers import Project, png

GOOD = """
version: 1
defaults:
  model: flux-2-flex
  steps: 30
vars:
  brand: Northwind
assets:
  hero:
    prompt: "A poster for {brand} with the headline 'Brew bold'"
    seed: 42
    width: 1536
    height: 864
  hero-autumn:
    prompt: "Same poster as image 1, autumn palette, logo from image 2 top left"
    references: [hero, brand/logo.png]
  shelf:
    model: flux-2-pro
    prompt:
      scene: Coffee bags on a wooden shelf
      subjects: [{description: "kraft bag with '{brand}' label", position: center}]
      color_palette: ["#3B2A1A", "#E8D5B7"]
    out: site/img/shelf.webp
    output_format: webp
"""


def errors(project: Project) -> list[str]:
    result = project.run("validate")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].endswith("in the manifest")
    return lines[:-1]


def test_valid_manifest_resolves_defaults_vars_and_structured_prompts(project: Project) -> None:
    png(project.root / "brand/logo.png")
    project.manifest(GOOD)
    result = project.run("validate")
    assert result.exit_code == 0, result.stderr
    assert "valid, 3 assets" in result.stdout
    manifest = load_manifest(project.root / "flexforge.yaml")
    assert list(manifest.assets) == ["hero", "hero-autumn", "shelf"]
    hero = manifest.assets["hero"]
    assert hero.prompt == "A poster for Northwind with the headline 'Brew bold'"
    assert (hero.steps, hero.guidance, hero.prompt_upsampling, hero.out) == (
        30,
        4.5,
        False,
        "assets/hero.png",
    )
    autumn = manifest.assets["hero-autumn"]
    assert autumn.asset_refs == ("hero",) and autumn.references == ("hero", "brand/logo.png")
    shelf = manifest.assets["shelf"]
    # flex-only defaults never reach other models; upsampling (off) applies to pro too
    assert (shelf.steps, shelf.guidance, shelf.prompt_upsampling) == (None, None, False)
    assert shelf.structured is not None
    assert shelf.structured["subjects"][0]["description"] == "kraft bag with 'Northwind' label"
    assert shelf.prompt.startswith('{"scene": "Coffee bags on a wooden shelf"')
    assert shelf.out == "site/img/shelf.webp"


def test_order_is_topological_whatever_the_declaration_order(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          c: {prompt: c, references: [b]}
          b: {prompt: b, references: [a]}
          a: {prompt: a}
    """)
    assert list(load_manifest(project.root / "flexforge.yaml").assets) == ["a", "b", "c"]


def test_every_error_is_reported_at_once_with_its_line(project: Project) -> None:
    project.manifest("""
        version: 1
        defaults:
          stpes: 20
        assets:
          hero:
            prompt: "Hello {brnad}"
            steps: 80
            width: 1000
          pro:
            model: flux-2-pro
            prompt: x
            guidance: 3
    """)
    lines = errors(project)
    assert "flexforge.yaml:3:3: defaults.stpes: unknown key 'stpes' (did you mean 'steps'?)" in lines
    assert "flexforge.yaml:7:12: assets.hero.steps: 80 is greater than the maximum of 50" in lines
    assert "flexforge.yaml:8:12: assets.hero.width: 1000 is not a multiple of 16" in lines
    # Semantic errors come in the same run as the schema's, sorted by line.
    assert (
        "flexforge.yaml:12:5: assets.pro.guidance: 'guidance' applies to flux-2-flex only, not flux-2-pro"
        in lines
    )
    # hero's refused steps and width do not hide the unknown var in its prompt.
    assert any(
        line.startswith("flexforge.yaml:6:13: assets.hero.prompt: unknown var {brnad}") for line in lines
    )
    assert len(lines) == 5


def test_a_refused_knob_or_unknown_key_does_not_hide_the_rest_of_its_asset(project: Project) -> None:
    """Every error at once: an asset whose `steps` the schema refused, with a misspelt key, still
    has its prompt's vars and its references checked in the same run."""
    project.manifest("""
        version: 1
        assets:
          g:
            prompt: "Hello {brnad}"
            references: [nope]
            steps: 80
            stpes: 3
          h: {prompt: x}
    """)
    text = "\n".join(errors(project))
    assert "assets.g.steps: 80 is greater than the maximum of 50" in text
    assert "assets.g.stpes: unknown key 'stpes' (did you mean 'steps'?)" in text
    assert "assets.g.prompt: unknown var {brnad}" in text
    assert "assets.g.references.0: reference 'nope' is neither an asset id nor a file" in text


def test_semantic_errors_are_all_reported(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          hero:
            prompt: "Hello {brnad}"
            references: [herp, ../outside.png, /etc/passwd]
          pro:
            model: flux-2-pro
            prompt: x
            guidance: 3
          big:
            prompt: x
            width: 4096
            height: 2048
          klein:
            model: flux-2-klein-4b
            prompt: x
            references: [hero, hero, hero, hero, hero]
    """)
    lines = errors(project)
    text = "\n".join(lines)
    assert "flexforge.yaml:4:13: assets.hero.prompt: unknown var {brnad}" in text
    assert (
        "flexforge.yaml:5:18: assets.hero.references.0: reference 'herp' is neither an asset id nor a file"
        in text
    )
    assert "(did you mean asset 'hero'?)" in text
    assert "assets.hero.references.1: reference '../outside.png' leaves the project root" in text
    assert "assets.hero.references.2: reference '/etc/passwd' is absolute" in text
    assert (
        "flexforge.yaml:9:5: assets.pro.guidance: 'guidance' applies to flux-2-flex only, not flux-2-pro"
        in text
    )
    assert "assets.big.width: 4096x2048 is 8.39 MP; the API allows at most 4 MP" in text
    assert "assets.klein.references: flux-2-klein-4b takes at most 4 references, got 5" in text


def test_cycle_is_printed(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          hero: {prompt: a, references: [banner]}
          banner: {prompt: b, references: [hero]}
    """)
    (line,) = errors(project)
    assert "dependency cycle: " in line
    cycle = line.split("dependency cycle: ")[1]
    assert cycle in ("hero -> banner -> hero", "banner -> hero -> banner")


def test_self_reference(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          hero: {prompt: a, references: [hero]}
    """)
    (line,) = errors(project)
    assert "an asset cannot reference itself" in line


def test_duplicate_keys_at_any_depth(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          hero:
            prompt: a
            seed: 1
            seed: 2
          hero:
            prompt: b
    """)
    lines = errors(project)
    assert "flexforge.yaml:6:5: assets.hero.seed: duplicate key 'seed' (first defined on line 5)" in lines
    assert "flexforge.yaml:7:3: assets.hero: duplicate key 'hero' (first defined on line 3)" in lines


def test_missing_reference_file(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          hero: {prompt: a, references: [brand/logo.png]}
    """)
    (line,) = errors(project)
    assert "assets.hero.references.0: reference 'brand/logo.png' is neither an asset id nor a file" in line


def test_symlink_leaving_the_root_is_refused(project: Project, tmp_path: pytest.TempPathFactory) -> None:
    outside = png(project.root.parent / "secret.png")
    (project.root / "brand").mkdir()
    (project.root / "brand" / "logo.png").symlink_to(outside)
    project.manifest("""
        version: 1
        assets:
          hero: {prompt: a, references: [brand/logo.png]}
    """)
    (line,) = errors(project)
    assert "leaves the project root" in line


def test_output_paths(project: Project) -> None:
    png(project.root / "brand/logo.png")
    project.manifest("""
        version: 1
        assets:
          a: {prompt: a, out: img/x.png}
          b: {prompt: b, out: img/x.png}
          c: {prompt: c, out: ../x.png}
          d: {prompt: d, out: img/d.jpg}
          e: {prompt: e, references: [img/x.png]}
          f: {prompt: f, out: .flexforge/f.png}
    """)
    text = "\n".join(errors(project))
    assert "assets.b.out: 'a' already writes 'img/x.png'" in text
    assert "assets.c.out: out '../x.png' leaves the project root" in text
    assert "assets.d.out: out 'img/d.jpg' does not end in .png but output_format is png" in text
    assert "assets.e.references.0: reference 'img/x.png' is neither an asset id nor a file" in text
    assert "inside .flexforge/" in text


def test_reference_to_another_assets_output_file(project: Project) -> None:
    png(project.root / "assets/hero.png")
    project.manifest("""
        version: 1
        assets:
          hero: {prompt: a}
          edit: {prompt: b, references: [assets/hero.png]}
    """)
    (line,) = errors(project)
    assert "'assets/hero.png' is the output of asset 'hero'; reference the asset id instead" in line


def test_api_keys_never_live_in_the_manifest(project: Project) -> None:
    project.manifest("""
        version: 1
        api_key: sk-123
        assets:
          hero: {prompt: a, bfl_api_key: x}
    """)
    lines = errors(project)
    assert any(
        line.startswith("flexforge.yaml:2:1: api_key: API keys never live") and "BFL_API_KEY" in line
        for line in lines
    )
    assert any("assets.hero.bfl_api_key: API keys never live" in line for line in lines)
    assert not any("sk-123" in line for line in lines)


def test_bad_asset_id_and_prompt(project: Project) -> None:
    project.manifest("""
        version: 1
        assets:
          Hero: {prompt: a}
          ok: {prompt: ""}
          n: {prompt: 5}
          s: {prompt: {scnee: x}}
    """)
    text = "\n".join(errors(project))
    assert "flexforge.yaml:3:3: assets.Hero: 'Hero' is not a valid asset id" in text
    assert "assets.ok.prompt: '' should be non-empty" in text
    assert "assets.n.prompt: 5 is not of type 'string', 'object'" in text
    assert "assets.s.prompt.scnee: unknown key 'scnee' (did you mean 'scene'?)" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "flexforge.yaml:1:1: the file is empty"),
        (b"version: 1\nassets:\n\thero: {prompt: a}\n", "flexforge.yaml:3:1: invalid YAML"),
        (b"version: 1\nassets: [\n", "invalid YAML"),
        (b'version: 1\nassets:\n  hero: {prompt: "caf\xe9"}\n', "flexforge.yaml:3:1: not UTF-8 (byte 0xe9)"),
        (b"- just\n- a list\n", "the manifest must be a mapping"),
        (b"version: 2\nassets: {a: {prompt: x}}\n", "flexforge.yaml:1:10: version: 1 was expected"),
        (b"version: 1\n", "'assets' is a required property"),
    ],
)
def test_broken_files(project: Project, raw: bytes, expected: str) -> None:
    (project.root / "flexforge.yaml").write_bytes(raw)
    text = "\n".join(errors(project))
    assert expected in text


def test_tabs_are_explained(project: Project) -> None:
    (project.root / "flexforge.yaml").write_bytes(b"version: 1\nassets:\n\thero: {prompt: a}\n")
    assert "use spaces" in "\n".join(errors(project))


def test_bom_is_accepted(project: Project) -> None:
    (project.root / "flexforge.yaml").write_bytes(b"\xef\xbb\xbfversion: 1\nassets:\n  a: {prompt: x}\n")
    assert project.run("validate").exit_code == 0


def test_alias_bomb_is_refused_fast(project: Project) -> None:
    lines = ["version: 1", 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 9)}]")
    lines.append("assets: {x: {prompt: y}}")
    (project.root / "flexforge.yaml").write_text("\n".join(lines) + "\n")
    text = "\n".join(errors(project))
    assert "alias bomb" in text


def test_brace_escapes_and_vars_in_out(project: Project) -> None:
    project.manifest("""
        version: 1
        vars: {brand: acme, year: 2026}
        assets:
          hero:
            prompt: "JSON like {{\\"a\\": 1}} for {brand} in {year}"
            out: "img/{brand}/hero.png"
    """)
    manifest = load_manifest(project.root / "flexforge.yaml")
    hero = manifest.assets["hero"]
    assert hero.prompt == 'JSON like {"a": 1} for acme in 2026'
    assert hero.out == "img/acme/hero.png"


def test_missing_manifest_is_one_clear_line(project: Project) -> None:
    result = project.run("plan")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: no manifest at")
    assert "flexforge init" in result.stderr


def test_bad_reference_images_are_refused_before_any_call(project: Project) -> None:
    from PIL import Image

    (project.root / "refs").mkdir()
    (project.root / "refs/notes.png").write_text("not an image")
    Image.new("RGB", (5000, 5000)).save(project.root / "refs/huge.png")
    bomb = project.root / "refs/bomb.png"
    Image.new("1", (64, 64)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (200_000).to_bytes(4, "big") * 2  # declares 200000x200000 pixels in its header
    data[29:33] = (zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, references: [refs/notes.png, refs/huge.png, refs/bomb.png]}
    """)
    text = "\\n".join(errors(project))
    assert "references.0: reference 'refs/notes.png': not a readable image" in text
    assert (
        "references.1: reference 'refs/huge.png': 5000x5000 is 25.0 MP; the API takes at most 20 MP" in text
    )
    assert "references.2: reference 'refs/bomb.png': declares an absurd pixel count" in text


def test_duplicates_schema_semantics_and_cycles_in_one_run_sorted_by_line(project: Project) -> None:
    project.manifest("""
        version: 1
        vars: {brand: A}
        assets:
          a: {prompt: "uses {nope}", references: [b]}
          b: {prompt: x, references: [a], width: 1000}
          c: {prompt: x, prompt: y}
          d: {prompt: x, references: [missing.png]}
    """)
    lines = errors(project)
    text = "\n".join(lines)
    assert "duplicate key 'prompt'" in text
    assert "assets.b.width: 1000 is not a multiple of 16" in text
    assert "unknown" in text and "nope" in text
    assert "missing.png" in text
    assert "dependency cycle: a -> b -> a" in text or "dependency cycle: b -> a -> b" in text
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)


def test_assets_and_vars_named_like_credentials_are_just_names(project: Project) -> None:
    project.manifest("""
        version: 1
        vars: {token: Brew}
        assets:
          key: {prompt: "a {token} poster"}
          secret: {prompt: b, references: [key]}
    """)
    result = project.run("validate")
    assert result.exit_code == 0, result.stderr


def test_final_size_alone_implies_the_smallest_covering_generated_size(project: Project) -> None:
    project.manifest("""
        version: 1
        defaults: {width: 512, height: 512}
        assets:
          square: {prompt: a, final_size: 1080x1080}
          thin: {prompt: b, final_size: 30x100}
          fixed: {prompt: c, final_size: 500x500, width: 512, height: 512}
    """)
    assets = load_manifest(project.root / "flexforge.yaml").assets
    assert (assets["square"].width, assets["square"].height) == (1088, 1088)
    assert (assets["thin"].width, assets["thin"].height) == (64, 112)
    assert (assets["fixed"].width, assets["fixed"].height) == (512, 512)


def test_two_manifests_in_one_folder_writing_the_same_path_is_an_error(project: Project) -> None:
    project.write(
        "site.yaml", "version: 1\nassets:\n  hero: {prompt: a}\n  logo: {prompt: b, out: img/logo.png}\n"
    )
    project.write(
        "ads.yaml", "version: 1\nassets:\n  hero: {prompt: c}\n  mark: {prompt: d, out: img/logo.png}\n"
    )
    project.write("notes.yaml", "just: notes\n")
    result = project.run("-f", "site.yaml", "validate")
    assert result.exit_code == 1
    assert (
        "site.yaml:3:3: assets.hero: 'assets/hero.png' is also written by asset 'hero' of ads.yaml"
        in result.stderr
    )
    assert (
        "site.yaml:4:26: assets.logo.out: 'img/logo.png' is also written by asset 'mark' of ads.yaml"
        in result.stderr
    )
    project.write("ads.yaml", "version: 1\nassets:\n  hero: {prompt: c, out: ads/hero.png}\n")
    assert project.run("-f", "site.yaml", "validate").exit_code == 0


def test_a_manifest_validated_before_sees_a_sibling_added_later_writing_its_paths(project: Project) -> None:
    """The validated-manifest cache and its unchanged bytes must not hide a manifest added beside
    it since, writing one of its outputs (spelled another way: `./`, `..`, other letter case)."""
    project.write(
        "site.yaml", "version: 1\nassets:\n  hero: {prompt: a}\n  logo: {prompt: b, out: img/logo.png}\n"
    )
    assert project.run("-f", "site.yaml", "validate").exit_code == 0
    project.write(
        "ads.yaml",
        "version: 1\nassets:\n  a: {prompt: c, out: ./assets/../assets/hero.png}\n"
        "  b: {prompt: d, out: IMG/Logo.png}\n",
    )
    result = project.run("-f", "site.yaml", "validate")
    assert result.exit_code == 1, result.stderr
    assert "'assets/hero.png' is also written by asset 'a' of ads.yaml" in result.stderr
    assert "'img/logo.png' is also written by asset 'b' of ads.yaml" in result.stderr


def test_a_reference_that_is_a_link_loop_is_one_clear_line(project: Project) -> None:
    # pathlib's resolve() raised RuntimeError here: validation ended in "internal error".
    (project.root / "loop.png").symlink_to("loop.png")
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, references: [loop.png]}
    """)
    assert errors(project) == [
        "flexforge.yaml:3:31: assets.a.references.0: reference 'loop.png' goes round a loop of "
        "symbolic links; point it at a real file"
    ]
