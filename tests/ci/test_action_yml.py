"""action.yml's own steps, run as the runner would run them: its `run:` scripts under
`bash --noprofile --norc -eo pipefail`, with `env:` expressions filled from the inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ci.conftest import Actions, git
from tests.support.fake_github import TOKEN

ROOT = Path(__file__).resolve().parents[2]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())


def _inputs(given: dict[str, str]) -> dict[str, str]:
    found = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    found["github-token"] = TOKEN
    found.update(given)
    return found


def _expand(value: str, inputs: dict[str, str], temp: Path) -> str:
    def one(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr.startswith("inputs."):
            return inputs[expr.removeprefix("inputs.")]
        if expr == "runner.temp":
            return str(temp)
        if expr == "steps.python.outputs.python-path":
            return sys.executable
        raise AssertionError(f"no value for ${{{{ {expr} }}}} in this test")

    return re.sub(r"\$\{\{(.*?)\}\}", one, value)


def _run_step(
    step: dict[str, Any], inputs: dict[str, str], temp: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    step_env = {k: _expand(str(v), inputs, temp) for k, v in (step.get("env") or {}).items()}
    cwd = Path(env["GITHUB_WORKSPACE"]) / _expand(step.get("working-directory", "."), inputs, temp)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env={**env, **step_env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The install step, once: a venv in RUNNER_TEMP with flexforge from the action's checkout."""
    temp = tmp_path_factory.mktemp("runner-temp")
    step = next(s for s in ACTION["runs"]["steps"] if "pip install" in s.get("run", ""))
    env = {
        **os.environ,
        "RUNNER_TEMP": str(temp),
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_WORKSPACE": str(temp),
    }
    done = _run_step(step, _inputs({}), temp, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (temp / "flexforge-venv" / "bin" / "flexforge").is_file()
    return temp


def test_the_run_step_reviews_a_pull_request_with_inputs_from_env_only(
    installed: Path, actions: Actions
) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("A flat logo", "A flat logo reading 'NEW'")
    head = actions.repo.commit("new logo")
    actions.pull_request(3, base, head)
    step = next(s for s in ACTION["runs"]["steps"] if s.get("id") == "run")
    pwned = actions.dir / "pwned"
    hostile = f"'; touch {pwned}; ' $(touch {pwned}) `touch {pwned}`"
    inputs = _inputs({"command": "plan", "working-directory": "site", "provider": "draft", "args": hostile})
    env = {**os.environ, **actions.env, "RUNNER_TEMP": str(installed)}
    for name in [k for k in env if k.startswith("FLEXFORGE_CI_")]:
        del env[name]  # only what the step's env: gives
    done = _run_step(step, inputs, installed, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not pwned.exists()  # an input is data: no shell ever reads it
    assert "::group::flexforge validate" in done.stdout
    assert [w.method for w in actions.github.writes()] == ["POST"]
    assert "`logo`" in actions.github.writes()[0].body["body"]
