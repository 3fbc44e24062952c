"""Free renditions: derived locally from another asset's output, keyed by operations and input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.helpers import Project, png

MANIFEST = """
version: 1
defaults: {width: 256, height: 256}
assets:
  hero: {prompt: "a red bicycle", seed: 11}
  hero-{ch}:
    matrix: {ch: [instagram-story, email-header]}
    from: hero
    size: "{ch}"
    output_format: jpeg
    quality: 80
    logo: {file: brand/logo.png, position: top-right}
    text: {text: "Ride now", position: bottom, color: "#ffee00"}
  hero-pad: {from: hero, fit: contain, size: 300x100, background: "#000000", output_format: webp}
  hero-copy: {from: hero, output_format: jpeg}
"""


def _project(root: Path) -> Project:
    project = Project(root)
    project.manifest(MANIFEST)
    png(root / "brand" / "logo.png", (40, 20), (0, 0, 255))
    return project


def test_plan_shows_renditions_as_free(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = project.run("plan", "--json", "--provider", "bfl")
    rows = {a["id"]: a for a in result.json()["assets"]}
    assert rows["hero"]["estimated_cost_usd"] > 0
    for asset_id in ("hero-instagram-story", "hero-email-header", "hero-pad", "hero-copy"):
        assert rows[asset_id]["rendition"] and rows[asset_id]["estimated_cost_usd"] == 0
    assert result.json()["estimated_cost_usd"] == rows["hero"]["estimated_cost_usd"]
    text = project.run("plan", "--provider", "bfl").stdout
    assert "hero-pad" in text and "free (rendition)" in text


def test_renditions_deliver_exact_sizes_and_formats(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert project.build().exit_code == 0
    expected = {
        "assets/hero-instagram-story.jpg": ((1080, 1920), "JPEG"),
        "assets/hero-email-header.jpg": ((600, 200), "JPEG"),
        "assets/hero-pad.webp": ((300, 100), "WEBP"),
        "assets/hero-copy.jpg": ((256, 256), "JPEG"),
    }
    for rel, (size, fmt) in expected.items():
        with Image.open(tmp_path / rel) as img:
            assert (img.size, img.format) == (size, fmt), rel
    with Image.open(tmp_path / "assets/hero-pad.webp") as img:
        assert img.convert("RGB").getpixel((2, 50)) == (0, 0, 0)  # padded, not cropped
    lock = project.lock()["assets"]
    assert lock["hero-pad"]["generator"] == "rendition" and lock["hero-pad"]["cost_usd"] == 0


def _build_in_process(root: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    subprocess.run(
        [sys.executable, "-m", "flexforge", "-C", str(root), "build", "--provider", "draft"],
        check=True,
        capture_output=True,
        env=env,
    )


def test_renditions_are_byte_deterministic_across_processes(tmp_path: Path) -> None:
    a, b = _project(tmp_path / "a"), _project(tmp_path / "b")
    _build_in_process(a.root)
    _build_in_process(b.root)
    for rel in ("assets/hero-instagram-story.jpg", "assets/hero-email-header.jpg", "assets/hero-pad.webp"):
        assert a.read(rel) == b.read(rel), rel
    assert a.lock()["assets"]["hero-pad"]["key"] == b.lock()["assets"]["hero-pad"]["key"]


def test_a_rendition_restores_like_any_asset_and_follows_its_input(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert project.build().exit_code == 0
    before = project.read("assets/hero-pad.webp")
    (tmp_path / "assets/hero-pad.webp").unlink()
    assert project.plan()["hero-pad"] == "restore"
    assert project.build().exit_code == 0 and project.read("assets/hero-pad.webp") == before
    project.edit('background: "#000000"', 'background: "#ff0000"')
    plan = project.plan()
    assert plan["hero-pad"] == "regenerate" and plan["hero"] == "none"
    project.edit("seed: 11", "seed: 12")
    plan = project.plan()
    assert all(plan[i] == "regenerate" for i in ("hero", "hero-pad", "hero-copy", "hero-email-header"))


def test_switching_provider_does_not_remake_a_rendition_of_a_file(tmp_path: Path) -> None:
    project = Project(tmp_path)
    png(tmp_path / "photo.png", (200, 100))
    project.manifest("version: 1\nassets:\n  thumb: {from: photo.png, size: 100x50}\n")
    assert project.build().exit_code == 0
    result = project.run("plan", "--json", "--provider", "bfl")
    assert [a["action"] for a in result.json()["assets"]] == ["none"]


def test_bad_rendition_operations_are_located_errors(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        assets:
          hero: {prompt: "x"}
          a: {from: hero, fit: squash}
          b: {from: hero, prompt: "y", seed: 3}
          c: {from: nothing.png}
          d: {from: hero, logo: {file: missing.png}}
          e: {from: hero, text: {text: "hi", position: middle}}
          f: {from: hero, size: instagram-squar}
          g: {from: hero, quality: 0}
        """
    )
    result = project.run("validate")
    err = result.stderr
    assert result.exit_code == 1 and "Traceback" not in err
    assert "flexforge.yaml:4:" in err and "'squash' is not one of" in err
    assert "flexforge.yaml:5:" in err and "a rendition (`from:`) is not generated: remove 'prompt'" in err
    assert "remove 'seed'" in err
    assert "flexforge.yaml:6:" in err and "reference 'nothing.png' is neither an asset id nor a file" in err
    assert "flexforge.yaml:7:" in err and "'missing.png'" in err
    assert "flexforge.yaml:8:" in err and "'middle' is not one of" in err
    assert "flexforge.yaml:9:" in err and "unknown size preset 'instagram-squar'" in err
    assert "flexforge.yaml:10:" in err and "quality" in err


def test_rendition_inputs_outside_the_root_are_refused(tmp_path: Path) -> None:
    outside = png(tmp_path / "outside.png", (32, 32))
    project = Project(tmp_path / "p")
    (project.root / "brand").mkdir()
    (project.root / "brand" / "link.png").symlink_to(outside)
    project.manifest(
        """
        version: 1
        assets:
          hero: {prompt: "x"}
          a: {from: ../outside.png, size: 10x10}
          b: {from: hero, logo: {file: brand/link.png}}
          c: {from: hero, text: {text: "hi", font: /etc/passwd}}
        """
    )
    result = project.run("validate")
    err = result.stderr
    assert result.exit_code == 1 and "Traceback" not in err
    assert "flexforge.yaml:4:" in err and "leaves the project root" in err
    assert "flexforge.yaml:5:" in err and "brand/link.png" in err
    assert "flexforge.yaml:6:" in err and "is absolute" in err


def test_the_campaign_example_builds_offline_within_its_budget(tmp_path: Path) -> None:
    import shutil

    source = Path(__file__).resolve().parent.parent / "examples" / "campaign"
    root = tmp_path / "campaign"
    shutil.copytree(
        source,
        root,
        ignore=shutil.ignore_patterns("assets", "social", "variants", "flexforge.lock", ".flexforge*"),
    )
    project = Project(root)
    plan = project.run("plan", "--json", "--provider", "bfl").json()
    paid = [a for a in plan["assets"] if a["estimated_cost_usd"] > 0]
    assert len(paid) == 15 and len(plan["assets"]) == 39
    assert 0 < plan["estimated_cost_usd"] <= 2.5
    assert project.build().exit_code == 0
    with Image.open(root / "social/ember/open-graph.jpg") as img:
        assert img.size == (1200, 630)
    result = project.run("pick", "hero-ember", "3", "--provider", "draft")
    assert result.exit_code == 0 and "no API call" in result.stdout


AVIF_MANIFEST = """
version: 1
defaults: {width: 256, height: 256}
assets:
  hero: {prompt: "a red bicycle", seed: 11}
  hero-avif:
    from: hero
    size: 300x200
    output_format: avif
    quality: 60
    logo: {file: brand/logo.png, position: top-right}
  hero-web: {from: hero-avif, output_format: webp}
"""


def _avif_project(root: Path) -> Project:
    project = Project(root)
    project.manifest(AVIF_MANIFEST)
    png(root / "brand" / "logo.png", (40, 20), (0, 0, 255))
    return project


def test_avif_renditions_are_byte_deterministic_across_processes(tmp_path: Path) -> None:
    a, b = _avif_project(tmp_path / "a"), _avif_project(tmp_path / "b")
    _build_in_process(a.root)
    _build_in_process(b.root)
    assert a.read("assets/hero-avif.avif") == b.read("assets/hero-avif.avif")
    with Image.open(a.root / "assets/hero-avif.avif") as img:
        assert (img.format, img.size) == ("AVIF", (300, 200))
    # An AVIF rendition is an input like any other: a WebP made from it, the same size.
    with Image.open(a.root / "assets/hero-web.webp") as img:
        assert (img.format, img.size) == ("WEBP", (300, 200))
    assert a.lock()["assets"]["hero-avif"]["key"] == b.lock()["assets"]["hero-avif"]["key"]


def test_an_avif_rendition_restores_like_any_asset_and_is_keyed_by_its_quality(tmp_path: Path) -> None:
    project = _avif_project(tmp_path)
    assert project.build().exit_code == 0
    before = project.read("assets/hero-avif.avif")
    (tmp_path / "assets/hero-avif.avif").unlink()
    assert project.plan()["hero-avif"] == "restore"
    assert project.build().exit_code == 0 and project.read("assets/hero-avif.avif") == before
    # The quality is part of its key: another quality is another image, made again for free.
    project.edit("quality: 60", "quality: 40")
    plan = project.plan()
    assert plan["hero-avif"] == "regenerate" and plan["hero"] == "none"
    rows = {a["id"]: a for a in project.run("plan", "--json", "--provider", "bfl").json()["assets"]}
    assert rows["hero-avif"]["estimated_cost_usd"] == 0 and rows["hero-avif"]["rendition"]


def test_avif_is_for_renditions_only_and_never_sent_to_the_api(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(
        """
        version: 1
        assets:
          hero: {prompt: "x", output_format: avif, out: hero.avif}
          small: {from: plain, output_format: avif, size: 64x64}
          plain: {prompt: "y"}
          edit: {prompt: "z", references: [small]}
          picks: {prompt: "w", variants: 3, output_format: avif}
        """
    )
    result = project.run("validate")
    err = result.stderr
    assert result.exit_code == 1 and "Traceback" not in err
    assert "flexforge.yaml:3:" in err and "output_format avif: the API returns png, jpeg or webp" in err
    assert "flexforge.yaml:6:" in err and "small is avif, which the API does not take as a reference" in err
    assert "flexforge.yaml:7:" in err and "assets.picks.output_format" in err  # once, not per candidate
    assert "3 errors in the manifest" in err  # the rendition itself is fine


def test_a_pillow_without_avif_is_a_located_error_naming_the_fix(tmp_path: Path) -> None:
    project = _avif_project(tmp_path)
    # A Pillow built without libavif (a distribution's package): its plugin cannot import _avif.
    code = (
        "import sys; sys.modules['PIL._avif'] = None; sys.argv[0] = 'flexforge'; "
        "from flexforge.__main__ import main; main()"
    )

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, "-C", str(tmp_path), "build", "--provider", "draft"],
            capture_output=True,
            text=True,
        )

    result = build()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "flexforge.yaml:8:" in result.stderr and "assets.hero-avif.output_format" in result.stderr
    assert "has no AVIF support; install Pillow 11.3 or later" in result.stderr
    assert "pip install -U 'pillow>=11.3'" in result.stderr
    assert not (tmp_path / "assets" / "hero-avif.avif").exists()
    # Validated earlier by a Python whose Pillow had AVIF (the cached validation holds): the
    # rendition itself fails with the same fix, and what needs no AVIF is built.
    assert project.run("validate").exit_code == 0
    result = build()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hero-avif" in result.stderr and "has no AVIF support" in result.stderr
    assert "internal error" not in result.stderr
    assert (tmp_path / "assets" / "hero.png").exists()
    assert not (tmp_path / "assets" / "hero-avif.avif").exists()
