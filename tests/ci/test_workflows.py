"""The action and the workflows `init` writes: linted offline by zizmor and GitHub's schemas, and
checked for the rules that keep a key and a token safe."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexforge.ci.workflows import WORKFLOWS, Placement, render

ROOT = Path(__file__).resolve().parents[2]
ACTION = "acme/flexforge@" + "2" * 40
# The third-party actions we pin, with the release each commit is (see docs/github-actions.md).
PINS = {
    "actions/checkout": ("11bd71901bbe5b1630ceea73d27597364c9af683", "v4.2.2"),
    "actions/setup-python": ("a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "actions/cache/restore": ("5a3ec84eff668545956fd18022155c47e93e2684", "v4.2.3"),
    "actions/cache/save": ("5a3ec84eff668545956fd18022155c47e93e2684", "v4.2.3"),
    "actions/upload-artifact": ("ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
    "actions/download-artifact": ("d3f86a106a0bac45b974a628896c90dbdf5c8093", "v4.3.0"),
}
PLACES = [Placement(Path("/r"), ".", "main", True), Placement(Path("/r"), "web/img", "trunk", True)]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


@pytest.fixture(params=PLACES, ids=["root", "subfolder"])
def workflows(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    for kind in WORKFLOWS:
        (folder / f"flexforge-{kind}.yml").write_text(render(kind, request.param, ACTION))
    (folder / "flexforge-build-sharded.yml").write_text(render("build", request.param, ACTION, SHARDS))
    return folder


SHARDS = 4  # `init --shards 4`: the build as four runners and a fan-in


def _docs() -> list[tuple[str, str]]:
    texts = [("action.yml", (ROOT / "action.yml").read_text())]
    texts += [(kind, render(kind, place, ACTION)) for kind in WORKFLOWS for place in PLACES]
    texts += [("build --shards", render("build", place, ACTION, SHARDS)) for place in PLACES]
    return texts


def test_zizmor_finds_nothing_in_the_workflows(workflows: Path) -> None:
    done = subprocess.run(
        [_tool("zizmor"), "--offline", str(workflows.parent.parent)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr


def test_zizmor_finds_nothing_in_the_action(tmp_path: Path) -> None:
    shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
    done = subprocess.run([_tool("zizmor"), "--offline", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr


def test_githubs_schemas_accept_the_workflows_and_the_action(workflows: Path) -> None:
    tool = _tool("check-jsonschema")
    files = [str(p) for p in sorted(workflows.iterdir())]
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", *files], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-actions", str(ROOT / "action.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_action_is_pinned_by_commit_to_a_known_release() -> None:
    for name, text in _docs():
        for line in text.splitlines():
            match = re.match(r"\s*(?:- )?uses:\s*(\S+)(?:\s*#\s*(\S+))?", line)
            if not match:
                continue
            ref, comment = match.group(1), match.group(2)
            if ref == ACTION:
                continue
            repo, _, sha = ref.partition("@")
            assert repo in PINS, f"{name}: {ref} is not in the table of pinned actions"
            assert (sha, comment) == PINS[repo], f"{name}: {line.strip()}"


def test_no_expression_reaches_a_shell_script() -> None:
    for name, text in _docs():
        doc = yaml.safe_load(text)
        steps = (
            doc["runs"]["steps"] if "runs" in doc else [s for j in doc["jobs"].values() for s in j["steps"]]
        )
        for step in steps:
            assert "${{" not in step.get("run", ""), f"{name}: {step.get('name')}"


def _jobs(kind: str, place: Placement, shards: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = yaml.safe_load(render(kind, place, ACTION, shards))
    return doc, doc["jobs"]


@pytest.mark.parametrize("place", PLACES)
def test_least_privilege_concurrency_and_no_persisted_credentials(place: Placement) -> None:
    for kind, shards in [*((k, 0) for k in WORKFLOWS), ("build", SHARDS)]:
        doc, jobs = _jobs(kind, place, shards)
        assert doc["permissions"] == {}, kind
        for job in jobs.values():
            assert job["permissions"] and job["timeout-minutes"] <= 120
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False
        if kind != "comment":
            assert "concurrency" in doc


def test_the_pull_request_check_has_no_secret_and_runs_no_paid_build() -> None:
    for place in PLACES:
        text = render("check", place, ACTION)
        doc = yaml.safe_load(text)
        assert list(doc[True]) == ["pull_request"]  # never pull_request_target
        assert "secrets." not in text
        flexforge = [s for s in doc["jobs"]["review"]["steps"] if s.get("uses") == ACTION]
        assert [s["with"]["command"] for s in flexforge] == ["plan"]


def test_the_comment_job_checks_out_nothing_and_runs_only_for_forks() -> None:
    doc = yaml.safe_load(render("comment", PLACES[1], ACTION))
    job = doc["jobs"]["comment"]
    assert "head_repository.full_name != github.repository" in job["if"]
    assert not any("checkout" in s.get("uses", "") for s in job["steps"])
    assert set(job["permissions"]) == {"actions", "pull-requests"}


def test_the_build_takes_its_key_from_an_environment_and_keeps_a_budget() -> None:
    doc = yaml.safe_load(render("build", PLACES[0], ACTION))
    job = doc["jobs"]["build"]
    assert job["environment"] == "flexforge"
    assert set(doc[True]) == {"push", "workflow_dispatch"}
    step = next(s for s in job["steps"] if s.get("uses") == ACTION)
    assert step["env"] == {"BFL_API_KEY": "${{ secrets.BFL_API_KEY }}"}
    assert step["with"]["command"] == "build" and step["with"]["max-cost"]
    assert doc["concurrency"]["cancel-in-progress"] is False


def test_the_action_saves_its_cache_even_when_cancelled() -> None:
    doc = yaml.safe_load((ROOT / "action.yml").read_text())
    save = next(s for s in doc["runs"]["steps"] if s.get("uses", "").startswith("actions/cache/save@"))
    assert save["if"].startswith("always()")
    restore = next(s for s in doc["runs"]["steps"] if s.get("uses", "").startswith("actions/cache/restore@"))
    assert "hashFiles(" in restore["with"]["key"] and ".lock" in restore["with"]["key"]
    install = next(s for s in doc["runs"]["steps"] if "pip install" in s.get("run", ""))
    assert '"$GITHUB_ACTION_PATH"' in install["run"]


@pytest.mark.parametrize("place", PLACES, ids=["root", "subfolder"])
def test_the_sharded_build_runs_n_runners_through_the_remote_then_one_fan_in(place: Placement) -> None:
    doc, jobs = _jobs("build", place, SHARDS)
    assert set(doc[True]) == {"push", "workflow_dispatch"}
    assert doc["concurrency"]["cancel-in-progress"] is False
    shard, fan_in = jobs["shard"], jobs["fan-in"]
    assert shard["strategy"]["matrix"]["shard"] == [1, 2, 3, 4]
    assert shard["strategy"]["fail-fast"] is False  # a failed runner leaves the others' paid tasks alone
    assert shard["permissions"] == {"contents": "read"}
    build = next(s for s in shard["steps"] if s.get("uses") == ACTION)
    assert build["with"]["command"] == "build" and build["with"]["max-cost"]
    assert build["with"]["args"] == "--shard ${{ matrix.shard }}/4"
    assert build["with"]["working-directory"] == place.working_directory
    assert build["env"]["BFL_API_KEY"] == "${{ secrets.BFL_API_KEY }}"
    assert build["env"]["FLEXFORGE_REMOTE_WRITE"] == "1"
    upload = next(s for s in shard["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == f"{place.working_directory}/flexforge.lock"
    assert upload["with"]["name"].startswith(f"flexforge-lock-{place.slug}-")
    # The fan-in: after every runner, their locks merged, every image from the remote, no key.
    assert fan_in["needs"] == "shard"
    download = next(s for s in fan_in["steps"] if s.get("uses", "").startswith("actions/download-artifact@"))
    assert download["with"]["pattern"] == f"flexforge-lock-{place.slug}-*"
    final = next(s for s in fan_in["steps"] if s.get("uses") == ACTION)
    assert final["with"]["shard-locks"] == download["with"]["path"]
    assert final["with"]["args"] == "--frozen" and final["with"]["publish"] == "push"
    assert "BFL_API_KEY" not in final.get("env", {})
    assert "secrets.BFL_API_KEY" not in yaml.safe_dump(fan_in)


def test_init_writes_the_sharded_build_when_asked(tmp_path: Path) -> None:
    from tests.helpers import Project

    project = Project(tmp_path / "site")
    result = project.run("init", "--action", ACTION, "--shards", "3")
    assert result.exit_code == 0, result.stderr
    doc = yaml.safe_load((project.root / ".github" / "workflows" / "flexforge-build.yml").read_text())
    assert doc["jobs"]["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert project.run("init", "--workflows-only", "--action", ACTION, "--shards", "1").exit_code == 2
