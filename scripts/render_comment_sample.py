"""Render the pull-request comment for the example project, as GitHub would show it, for the README.

A temp git repository holds examples/launch-kit built with the emulator (base commit); the pull
request changes the tagline and commits the rebuilt images, and edits the shelf's prompt without
building it. `flexforge ci run` makes the review exactly as the action does; the Markdown goes to
docs/img/pr-comment.md, and, when Chromium is installed, a screenshot of it rendered with
GitHub-like styles (its images pointed at the local files) to docs/img/pr-comment.png.

    python scripts/render_comment_sample.py
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
CSS = """
body { font: 14px/1.5 -apple-system, 'Segoe UI', 'Noto Sans', Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0; padding: 16px; width: 880px; }
.box { border: 1px solid #d1d9e0; border-radius: 6px; }
.head { background: #f6f8fa; border-bottom: 1px solid #d1d9e0; padding: 8px 16px; color: #59636e; }
.body { padding: 8px 16px 16px; }
h3 { font-size: 1.25em; margin: 12px 0 4px; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #d1d9e0; padding: 6px 13px; vertical-align: middle; }
tr:nth-child(2n) { background: #f6f8fa; }
code { background: #eff1f3; border-radius: 6px; padding: .2em .4em; font-size: 85%; }
sub { color: #59636e; } a { color: #0969da; text-decoration: none; }
details summary { cursor: pointer; }
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 2):
        sys.exit(f"{' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    from flexforge.emulator.testing import running_emulator

    with tempfile.TemporaryDirectory() as tmp, running_emulator(latency=0.01) as emu:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT / "examples" / "launch-kit", repo / "launch-kit")
        # The example ignores its outputs (they are made, not kept, in flexforge's own repo); a
        # user's project commits them.
        (repo / "launch-kit" / ".gitignore").write_text(".flexforge/\n")
        env = {
            **os.environ,
            **emu.env(),
            "GIT_AUTHOR_NAME": "Ada",
            "GIT_AUTHOR_EMAIL": "ada@example.com",
            "GIT_COMMITTER_NAME": "Ada",
            "GIT_COMMITTER_EMAIL": "ada@example.com",
            "FLEXFORGE_DATA_DIR": str(Path(tmp) / "data"),
            "FLEXFORGE_CACHE_DIR": str(Path(tmp) / "cache"),
        }
        flexforge = [sys.executable, "-m", "flexforge", "-C", "launch-kit"]
        run("git", "init", "-q", "-b", "main", cwd=repo, env=env)
        run(*flexforge, "build", "--provider", "emulator", cwd=repo, env=env)
        run("git", "add", "-A", cwd=repo, env=env)
        run("git", "commit", "-qm", "launch kit", cwd=repo, env=env)
        base = run("git", "rev-parse", "HEAD", cwd=repo, env=env).strip()
        manifest = repo / "launch-kit" / "flexforge.yaml"
        text = manifest.read_text().replace("tagline: Brew bold", "tagline: Bold by nature")
        manifest.write_text(text)
        run(*flexforge, "build", "--provider", "emulator", cwd=repo, env=env)
        text = text.replace("on a rustic wooden shelf", "on a marble counter")
        manifest.write_text(text.replace("'{brand}' label", "'{brand} {product}' label"))
        run("git", "add", "-A", cwd=repo, env=env)
        run("git", "commit", "-qm", "new tagline", cwd=repo, env=env)
        head = run("git", "rev-parse", "HEAD", cwd=repo, env=env).strip()
        runner = Path(tmp) / "runner"
        runner.mkdir()
        event = {"pull_request": {"number": 12, "base": {"sha": base}, "head": {"sha": head}}}
        (runner / "event.json").write_text(json.dumps(event))
        ci_env = {
            **env,
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(runner / "event.json"),
            "GITHUB_REPOSITORY": "northwind/site",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_WORKSPACE": str(repo),
            "GITHUB_OUTPUT": str(runner / "output"),
        }
        run(
            *flexforge,
            "ci",
            "run",
            "--command",
            "plan",
            "--provider",
            "emulator",
            "--comment",
            "false",
            "--out-dir",
            str(runner / "out"),
            cwd=repo,
            env=ci_env,
        )
        comment = (runner / "out" / "comment.md").read_text()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "pr-comment.md").write_text(comment)
        print(f"wrote {OUT / 'pr-comment.md'} ({len(comment)} characters)")
        screenshot(comment, repo, {base: base, head: head}, runner / "out" / "previews")


def screenshot(comment: str, repo: Path, shas: dict[str, str], previews: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: docs/img/pr-comment.png not made")
        return
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(comment)

    def local(match: re.Match[str]) -> str:
        sha, path = match.group(1), match.group(2)
        data = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=repo, capture_output=True).stdout
        return f'src="data:image/png;base64,{base64.b64encode(data).decode()}"'

    html = re.sub(r'src="https://github\.com/[^/]+/[^/]+/raw/([0-9a-f]{40})/([^"]+)"', local, html)
    page = (
        f"<!doctype html><meta charset=utf-8><style>{CSS}</style><div class=box>"
        f"<div class=head><b>github-actions</b> <span>bot</span> commented</div>"
        f"<div class=body>{html}</div></div>"
    )
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "comment.html"
        page_file.write_text(page)
        target = OUT / "pr-comment.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={target}",
                "--window-size=912,1400",
                page_file.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
