"""Make the README's screenshots of the gallery and the diff from examples/launch-kit.

    python scripts/readme_screenshots.py            # writes docs/img/gallery.png and docs/img/diff.png

Builds a copy of the example with the draft provider in a temp folder, commits it, changes the
hero's seed (so the hero and everything built on it regenerate), builds again, and photographs
`flexforge gallery` and `flexforge diff HEAD --html` in the system's headless Chromium. The PNGs
are quantised to a palette so that they stay small in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "launch-kit"
OUT = REPO / "docs" / "img"
VIEWPORT = {"width": 1200, "height": 760}
GIT = ["git", "-c", "user.name=flexforge", "-c", "user.email=docs@localhost"]


def flexforge(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "flexforge", "-C", str(root), "-q", *args], check=True)


def shoot(url: str, dest: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/lib/chromium/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url, wait_until="load")
        page.wait_for_function(  # the pictures in view (the others load lazily, on scrolling)
            "Array.from(document.querySelectorAll('#cards img'))"
            ".filter((i) => !i.closest('details:not([open])') && i.getBoundingClientRect().top < innerHeight)"
            ".every((i) => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(dest))
        browser.close()
    with Image.open(dest) as img:
        img.convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLEXFORGE_CACHE_DIR"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "launch-kit"
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".flexforge", "assets", "site"))
        (root / ".gitignore").unlink()
        flexforge(root, "build", "--provider", "draft")
        subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
        subprocess.run([*GIT, "-C", str(root), "add", "-A"], check=True)
        subprocess.run([*GIT, "-C", str(root), "commit", "-q", "-m", "launch kit"], check=True)
        manifest = root / "flexforge.yaml"
        manifest.write_text(manifest.read_text().replace("seed: 1207", "seed: 1300"))
        flexforge(root, "build", "--provider", "draft")
        manifest.write_text(manifest.read_text().replace("seed: 3002", "seed: 3003"))  # pending
        flexforge(root, "gallery", "--provider", "draft", "--out", str(Path(tmp) / "gallery"))
        flexforge(root, "diff", "HEAD", "--html", str(Path(tmp) / "diff"))
        shoot((Path(tmp) / "gallery" / "index.html").as_uri(), OUT / "gallery.png")
        shoot((Path(tmp) / "diff" / "index.html").as_uri(), OUT / "diff.png")
    for name in ("gallery.png", "diff.png"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
