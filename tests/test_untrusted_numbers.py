"""Numbers no JSON can carry (NaN, infinities, integers past Python's conversion limit) never
reach the lock, the content key or the API: knobs and manifests refuse them, and every JSON
writer in flexforge refuses to write them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import Project
from tests.support.emulator import serve_builds

PACKAGE = Path(__file__).resolve().parents[1] / "flexforge"


def test_every_json_writer_in_flexforge_refuses_nan() -> None:
    """json.dumps writes NaN and Infinity by default, which no JSON reader accepts (the lock would
    stop parsing): every call in the package must say allow_nan=False."""
    lax = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "emulator" in path.parts:
            continue  # the test server, not a writer of flexforge's files or answers
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
            ):
                strict = any(
                    k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords
                )
                if not strict:
                    lax.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not lax, f"json writers without allow_nan=False: {lax}"


def test_a_lock_timeout_that_is_not_a_number_is_a_usage_error(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.manifest('version: 1\nassets:\n  a: {prompt: "x", seed: 1, width: 64, height: 64}\n')
    for raw in ("abc", "nan", "inf", "-5"):
        monkeypatch.setenv("FLEXFORGE_LOCK_TIMEOUT", raw)
        result = project.run("build", "--provider", "draft")
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith(
            f"error: FLEXFORGE_LOCK_TIMEOUT={raw!r} is not valid: expected a number"
        )
        assert result.stderr.count("\n") == 1 and "internal error" not in result.stderr
    assert not (project.root / "flexforge.lock").exists()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("FLEXFORGE_POLL_INTERVAL", "0"),
        ("FLEXFORGE_HTTP_TIMEOUT", "nan"),
        ("FLEXFORGE_MAX_RETRIES", "2.5"),
        ("FLEXFORGE_POLL_RATE", "1e9"),
    ],
)
def test_a_bad_provider_knob_stops_the_build_before_any_submission(
    project: Project, monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    with serve_builds(monkeypatch) as emu:
        monkeypatch.setenv(name, raw)
        project.manifest('version: 1\nassets:\n  a: {prompt: "x", seed: 1, width: 64, height: 64}\n')
        result = project.run("build", "--provider", "emulator")
        assert result.exit_code == 2, result.stderr
        assert f"error: {name}={raw!r} is not valid" in result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert emu.stats()["submissions"] == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("guidance: .nan", "assets.a.guidance: .nan is not a finite number"),
        ("guidance: -.inf", "assets.a.guidance: -.inf is not a finite number"),
        ("guidance: 1.0e+400", "assets.a.guidance: 1.0e+400 is not a finite number"),
        ("seed: " + "9" * 5000, "assets.a.seed: a number too long to use"),
    ],
    ids=["nan", "minus-inf", "overflow", "5000-digits"],
)
def test_a_number_json_cannot_carry_is_a_located_manifest_error(
    project: Project, value: str, message: str
) -> None:
    """Regression: `guidance: .nan` passed validation (NaN fails no range check) and would have
    been sent to the API; a 5000-digit seed was "internal error: ValueError"."""
    project.manifest(f'version: 1\nassets:\n  a: {{prompt: "x", width: 64, height: 64, {value}}}\n')
    result = project.run("validate")
    assert result.exit_code == 1
    assert "flexforge.yaml:3:" in result.stderr and message in result.stderr, result.stderr
    assert "internal error" not in result.stderr
