"""A real project in a temp dir, driven through the real CLI."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from flexforge.cli import cli


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def manifest(self, text: str) -> Path:
        return self.write("flexforge.yaml", text)

    def edit(self, old: str, new: str, rel: str = "flexforge.yaml") -> None:
        path = self.root / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    def run(self, *args: str) -> Run:
        result = CliRunner().invoke(cli, ["-C", str(self.root), *args], catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    def build(self, *args: str) -> Run:
        result = self.run("build", "--provider", "draft", *args)
        assert "Traceback" not in result.stderr
        return result

    def plan(self, *args: str) -> dict[str, str]:
        """asset id -> planned action, for the draft provider."""
        result = self.run("plan", "--json", "--provider", "draft", *args)
        assert result.exit_code == 0, result.stderr
        return {a["id"]: a["action"] for a in result.json()["assets"]}

    def lock(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "flexforge.lock").read_text())
        return data

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


def png(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path
