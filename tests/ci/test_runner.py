"""GitHub's runner files and workflow commands, written the way the runner parses them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flexforge.ci.runner import SUMMARY_LIMIT, Runner, command, escape_data, escape_property
from flexforge.errors import FlexforgeError


def runner(tmp_path: Path, **env: str) -> tuple[Runner, io.StringIO]:
    out = io.StringIO()
    base = {
        "GITHUB_OUTPUT": str(tmp_path / "out"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        "GITHUB_WORKSPACE": str(tmp_path),
    }
    return Runner.from_env({**base, **env}, out=out), out


def test_messages_and_properties_are_escaped_as_actions_toolkit_does() -> None:
    assert escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    line = command("error", "bad\n::warning::x", file="dir,x/a:b.yaml", line=3, col=None)
    assert line == "::error file=dir%2Cx/a%3Ab.yaml,line=3::bad%0A::warning::x"
    assert "\n" not in line


def test_a_multiline_output_cannot_forge_another_output(tmp_path: Path) -> None:
    r, _ = runner(tmp_path)
    r.set_output("plan", "line1\nchanges<<EOF\ntrue\nEOF")
    r.set_output("changes", "false")
    text = (tmp_path / "out").read_text().split("\n")
    name, delimiter = text[0].split("<<")
    assert name == "plan" and delimiter.startswith("ghadelimiter_")
    assert text[1:5] == ["line1", "changes<<EOF", "true", "EOF"] and text[5] == delimiter
    assert text[6].startswith("changes<<ghadelimiter_")


def test_the_summary_is_cut_at_githubs_limit(tmp_path: Path) -> None:
    r, _ = runner(tmp_path)
    r.summary("x" * 700_000)
    r.summary("é" * 700_000)
    size = (tmp_path / "summary").stat().st_size
    assert size <= SUMMARY_LIMIT
    assert (tmp_path / "summary").read_text(encoding="utf-8").endswith("GitHub keeps at most 1 MiB)_\n")


def test_group_and_untrusted_sections_are_closed_even_on_error(tmp_path: Path) -> None:
    r, out = runner(tmp_path)
    try:
        with r.group("build"), r.untrusted():
            r.emit("::error::from a hostile manifest")
            raise RuntimeError
    except RuntimeError:
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "::group::build"
    token = lines[1].removeprefix("::stop-commands::")
    assert len(token) == 32 and lines[3] == f"::{token}::" and lines[4] == "::endgroup::"


def test_outside_actions_nothing_is_written(tmp_path: Path) -> None:
    r = Runner.from_env({})
    r.set_output("x", "y")
    r.summary("z")
    assert r.event() == {}
    assert list(tmp_path.iterdir()) == []


def test_paths_are_made_relative_to_the_workspace(tmp_path: Path) -> None:
    r, _ = runner(tmp_path)
    assert r.relative_to_workspace(tmp_path / "site" / "flexforge.yaml") == "site/flexforge.yaml"
    assert r.relative_to_workspace(Path("/elsewhere/x.yaml")) == "/elsewhere/x.yaml"


def test_an_event_that_is_not_json_is_one_clear_error(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text("{nope")
    r, _ = runner(tmp_path, GITHUB_EVENT_PATH=str(event))
    with pytest.raises(FlexforgeError, match=r"event.json: not JSON"):
        r.event()
