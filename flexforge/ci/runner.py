"""GitHub's runner interface: the step's output and summary files, workflow commands, the event."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from flexforge.errors import FlexforgeError

# GitHub rejects a step summary above 1 MiB; a summary that large is useless anyway.
SUMMARY_LIMIT = 1024 * 1024 - 1024
MAX_EVENT_BYTES = 25 * 1024 * 1024


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as actions/toolkit's `escapeData` does."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (`file=`, `title=`), as toolkit's `escapeProperty`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties: str | int | None) -> str:
    props = ",".join(f"{k}={escape_property(str(v))}" for k, v in properties.items() if v not in (None, ""))
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


@dataclass(frozen=True, slots=True)
class Runner:
    """What a step sees of GitHub Actions, read from its environment (absent outside Actions)."""

    output_file: Path | None
    summary_file: Path | None
    event_name: str
    event_path: Path | None
    repository: str
    server_url: str
    api_url: str
    sha: str
    workspace: Path | None
    run_url: str
    out: TextIO = sys.stdout

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, out: TextIO | None = None) -> Runner:
        env = os.environ if env is None else env
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        repo = env.get("GITHUB_REPOSITORY", "")
        run_id = env.get("GITHUB_RUN_ID", "")
        return cls(
            output_file=_path(env.get("GITHUB_OUTPUT")),
            summary_file=_path(env.get("GITHUB_STEP_SUMMARY")),
            event_name=env.get("GITHUB_EVENT_NAME", ""),
            event_path=_path(env.get("GITHUB_EVENT_PATH")),
            repository=repo,
            server_url=server,
            api_url=env.get("GITHUB_API_URL", "https://api.github.com").rstrip("/"),
            sha=env.get("GITHUB_SHA", ""),
            workspace=_path(env.get("GITHUB_WORKSPACE")),
            run_url=f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else "",
            out=out or sys.stdout,
        )

    def event(self) -> dict[str, Any]:
        """The webhook payload that started the run ({} when there is none)."""
        if self.event_path is None or not self.event_path.is_file():
            return {}
        with self.event_path.open("rb") as fh:
            data = fh.read(MAX_EVENT_BYTES + 1)
        if len(data) > MAX_EVENT_BYTES:
            raise FlexforgeError(f"{self.event_path}: the event payload is over {MAX_EVENT_BYTES} bytes")
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise FlexforgeError(f"{self.event_path}: not JSON ({exc})") from None
        return event if isinstance(event, dict) else {}

    def set_output(self, name: str, value: str) -> None:
        """Append `name` to $GITHUB_OUTPUT, multi-line safe: a random delimiter no value can forge."""
        if self.output_file is None:
            return
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        if delimiter in value:  # pragma: no cover - 128 random bits
            raise FlexforgeError("output value contains the delimiter")
        with self.output_file.open("a", encoding="utf-8") as fh:
            fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")

    def summary(self, markdown: str) -> None:
        """Append to the job summary, cut to what GitHub accepts."""
        if self.summary_file is None:
            return
        used = self.summary_file.stat().st_size if self.summary_file.exists() else 0
        room = SUMMARY_LIMIT - used
        data = markdown.encode()
        if len(data) > room:
            note = b"\n\n_(summary cut: GitHub keeps at most 1 MiB)_\n"
            data = data[: max(0, room - len(note))].decode(errors="ignore").encode() + note
        with self.summary_file.open("ab") as fh:
            fh.write(data)

    def emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def annotate(
        self,
        level: str,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        col: int | None = None,
        title: str | None = None,
    ) -> None:
        self.emit(command(level, message, file=file, line=line, col=col, title=title))

    @contextmanager
    def untrusted(self) -> Iterator[None]:
        """Stop workflow commands while a repository's own text is printed: a hostile manifest
        could otherwise print `::add-mask::` or `::error` lines of its own."""
        token = secrets.token_hex(16)
        self.emit(f"::stop-commands::{token}")
        try:
            yield
        finally:
            self.emit(f"::{token}::")

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        """Fold what runs inside into one collapsible log section."""
        self.emit(command("group", title))
        try:
            yield
        finally:
            self.emit("::endgroup::")

    def relative_to_workspace(self, path: Path) -> str:
        """A path as annotations want it: relative to the repository root when inside it."""
        resolved = path.resolve()
        if self.workspace is not None:
            try:
                return resolved.relative_to(self.workspace.resolve()).as_posix()
            except ValueError:
                pass
        return path.as_posix()


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
