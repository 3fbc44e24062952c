"""`flexforge ci run` as the composite action runs it: real git, real files, a fake GitHub on loopback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flexforge.ci.comment import marker
from tests.ci.conftest import Actions, git
from tests.support.fake_github import TOKEN

MARKER = marker("site")


def _open_pr(actions: Actions, number: int = 7, *, fork: bool = False) -> tuple[str, str]:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("A flat logo", "A flat logo reading 'GREEN'")
    head = actions.repo.commit("greener logo")
    actions.pull_request(number, base, head, fork=fork)
    return base, head


def test_first_run_creates_the_comment_and_the_second_updates_the_same_one(actions: Actions) -> None:
    _open_pr(actions)
    first = actions.run("run", "--command", "plan")
    assert first.exit_code == 0, first.output
    posts = [r for r in actions.github.writes() if r.method == "POST"]
    assert len(posts) == 1 and posts[0].path == "/repos/acme/site/issues/7/comments"
    assert posts[0].authorization == f"Bearer {TOKEN}"
    body = posts[0].body["body"]
    assert body.startswith(MARKER + "\n")
    assert "`logo`" in body and "regenerate (prompt)" in body
    assert "`hero`" not in body  # unchanged assets stay out of the comment

    actions.repo.edit("'GREEN'", "'BLUE'")
    actions.repo.commit("bluer")
    second = actions.run("run", "--command", "plan")
    assert second.exit_code == 0, second.output
    writes = actions.github.writes()
    assert [w.method for w in writes] == ["POST", "PATCH"]
    comment_id = actions.github.comments[7][0]["id"]
    assert writes[1].path == f"/repos/acme/site/issues/comments/{comment_id}"
    assert len(actions.github.comments[7]) == 1


def test_a_comment_by_someone_else_with_the_marker_is_left_alone(actions: Actions) -> None:
    _open_pr(actions)
    actions.github.add_comment(7, MARKER + "\nI copied the marker", login="mallory")
    assert actions.run("run", "--command", "plan").exit_code == 0
    assert [w.method for w in actions.github.writes()] == ["POST"]
    assert actions.github.comments[7][0]["body"] == MARKER + "\nI copied the marker"


def test_the_comment_is_found_again_past_the_first_page(actions: Actions) -> None:
    _open_pr(actions)
    actions.github.page_size = 2
    assert actions.run("run", "--command", "plan").exit_code == 0
    for i in range(5):
        actions.github.add_comment(7, f"chatter {i}", login="someone")
    assert actions.run("run", "--command", "plan").exit_code == 0
    assert [w.method for w in actions.github.writes()] == ["POST", "PATCH"]


def test_outputs_summary_and_plan_json(actions: Actions) -> None:
    _open_pr(actions)
    result = actions.run("run", "--command", "plan", "--comment", "false")
    assert result.exit_code == 0, result.output
    out = actions.outputs()
    assert out["changes"] == "true"
    assert float(out["estimated-cost"]) == 0.0  # draft costs nothing
    plan = json.loads(Path(out["plan-json"]).read_text())
    assert {a["id"]: a["action"] for a in plan["assets"]}["logo"] == "regenerate"
    review = json.loads(Path(out["review-json"]).read_text())
    assert review["project"] == "site" and review["pull_request"] == 7
    assert [c["id"] for c in review["changes"]] == ["logo"]
    assert review["changes"][0]["before"] == "site/assets/logo.png"
    assert "`logo`" in actions.summary.read_text()
    assert actions.github.requests == []


def test_check_fails_with_an_annotation_on_the_assets_line(actions: Actions) -> None:
    _open_pr(actions)
    result = actions.run("run", "--command", "check", "--comment", "false")
    assert result.exit_code == 1
    assert (
        "::error file=site/flexforge.yaml,line=14,title=flexforge check::logo: regenerate (prompt)"
        in result.output
    )


def test_check_passes_on_a_clean_repository(actions: Actions) -> None:
    sha = git(actions.repo.root, "rev-parse", "HEAD")
    actions.event("push", {"before": sha}, sha)
    result = actions.run("run", "--command", "check")
    assert result.exit_code == 0, result.output
    assert actions.outputs()["changes"] == "false"


def test_validation_errors_become_annotations_and_the_comment_lists_them(actions: Actions) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("  steps: 4", "  steps: 80")
    head = actions.repo.commit("bad")
    actions.pull_request(8, base, head)
    result = actions.run("run", "--command", "check")
    assert result.exit_code == 1
    assert "::error file=site/flexforge.yaml,line=6,col=10,title=flexforge validate::" in result.output
    body = actions.github.writes()[0].body["body"]
    assert "the manifest has 1 error" in body and "greater than the maximum of 50" in body


def test_a_committed_image_change_shows_before_and_after_at_base_and_head(actions: Actions) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("A flat logo", "A round logo")
    assert actions.repo.flexforge("build", "--provider", "draft").exit_code == 0
    head = actions.repo.commit("round logo, built")
    actions.pull_request(9, base, head)
    assert actions.run("run", "--command", "check").exit_code == 0
    body = actions.github.writes()[0].body["body"]
    assert f"https://github.com/acme/site/raw/{base}/site/assets/logo.png" in body
    assert f"https://github.com/acme/site/raw/{head}/site/assets/logo.png" in body
    assert "regenerated (prompt)" in body


def test_a_fork_pull_request_is_reviewed_without_writing_to_github(actions: Actions) -> None:
    _open_pr(actions, fork=True)
    result = actions.run("run", "--command", "plan")
    assert result.exit_code == 0, result.output
    assert actions.github.writes() == []
    assert "read-only token" in result.output
    assert Path(actions.outputs()["review-json"]).is_file()


def test_a_pull_request_never_gets_a_paid_build(actions: Actions) -> None:
    before = (actions.repo.project / "flexforge.lock").read_bytes()
    _open_pr(actions, fork=True)
    result = actions.run("run", "--command", "build", "--provider", "bfl", BFL_API_KEY="sk-would-be-spent")
    assert result.exit_code == 2
    assert "refusing a paid build" in result.output
    assert "sk-would-be-spent" not in result.output
    assert (actions.repo.project / "flexforge.lock").read_bytes() == before
    assert actions.github.requests == []


def test_build_on_push_builds_with_the_budget_and_groups_its_log(actions: Actions) -> None:
    sha = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("A flat logo", "A flat logo, in red")
    actions.event("push", {"before": sha}, sha)
    result = actions.run("run", "--command", "build", "--max-cost", "1")
    assert result.exit_code == 0, result.output
    assert "::group::flexforge build" in result.output and "::endgroup::" in result.output
    assert "::stop-commands::" in result.output
    assert actions.outputs()["changes"] == "false"  # built: nothing left to do


def test_the_trusted_comment_job_checks_the_pull_request_head(actions: Actions) -> None:
    _base, head = _open_pr(actions, fork=True)
    assert actions.run("run", "--command", "plan").exit_code == 0
    review_file = actions.outputs()["review-json"]
    check_run = "https://github.com/acme/site/actions/runs/77"
    run = {"workflow_run": {"head_sha": head, "event": "pull_request", "html_url": check_run}}
    actions.event("workflow_run", run, "c" * 40)
    planted = json.loads(Path(review_file).read_text())
    planted["run_url"] = "https://evil.example/phish"
    Path(review_file).write_text(json.dumps(planted))
    posted = actions.run("comment", review_file)
    assert posted.exit_code == 0, posted.output
    assert [w.method for w in actions.github.writes()] == ["POST"]
    body = actions.github.writes()[0].body["body"]
    assert "evil.example" not in body
    assert f"[full table and logs]({check_run})" in body and f"({check_run}#artifacts)" in body

    # A review that names another pull request (whose head is not the run's) is refused.
    tampered = json.loads(Path(review_file).read_text())
    tampered["pull_request"] = 99
    actions.github.pulls[99] = {"number": 99, "head": {"sha": "d" * 40}}
    Path(review_file).write_text(json.dumps(tampered))
    refused = actions.run("comment", review_file)
    assert refused.exit_code == 1
    assert "not commenting" in refused.output
    assert [w.method for w in actions.github.writes()] == ["POST"]


def test_extra_arguments_cannot_switch_to_a_paid_provider(actions: Actions) -> None:
    _open_pr(actions, fork=True)
    result = actions.run("run", "--command", "build", "--args", "--provider=bfl")
    assert result.exit_code == 2
    assert "provider" in result.output and actions.github.requests == []


def test_unbalanced_quotes_in_args_are_a_usage_error(actions: Actions) -> None:
    result = actions.run("run", "--command", "plan", "--args", "'open")
    assert result.exit_code == 2 and "Traceback" not in result.output


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts and ".flexforge" not in p.parts
    }


def test_draft_previews_of_what_would_be_built_leave_the_checkout_alone(actions: Actions) -> None:
    _open_pr(actions)
    before = _tree(actions.repo.root)
    result = actions.run("run", "--command", "plan")
    assert result.exit_code == 0, result.output
    previews = Path(actions.outputs()["previews-dir"])
    assert [p.name for p in previews.iterdir()] == ["logo.png"]
    assert previews.joinpath("logo.png").read_bytes() != before["site/assets/logo.png"]
    assert _tree(actions.repo.root) == before
    body = actions.github.writes()[0].body["body"]
    assert '<a href="https://github.com/acme/site/actions/runs/42#artifacts">draft preview</a>' in body


def test_no_previews_when_asked_for_none(actions: Actions) -> None:
    _open_pr(actions)
    assert actions.run("run", "--command", "plan", "--previews", "false").exit_code == 0
    assert actions.outputs()["changes"] == "true" and "previews-dir" not in actions.outputs()


def executed_commands(log: str) -> list[str]:
    """The workflow commands GitHub's runner would act on in `log` (it honours stop-commands)."""
    commands, stopped_by = [], None
    for line in log.splitlines():
        if stopped_by is not None:
            if line == f"::{stopped_by}::":
                stopped_by = None
            continue
        if line.startswith("::stop-commands::"):
            stopped_by = line.removeprefix("::stop-commands::")
        elif line.startswith("::"):
            commands.append(line)
    return commands


def test_a_manifest_cannot_issue_workflow_commands_through_the_log(actions: Actions) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    text = (actions.repo.project / "flexforge.yaml").read_text()
    hostile = '\n  evil:\n    prompt: "x"\n    out: "assets/e\\n::add-mask::github\\n::error::pwned.png"\n'
    (actions.repo.project / "flexforge.yaml").write_text(text + hostile)
    head = actions.repo.commit("hostile")
    actions.pull_request(11, base, head)
    for command in ("plan", "check"):
        result = actions.run("run", "--command", command)
        assert not [c for c in executed_commands(result.output) if "pwned" in c or "add-mask" in c]
    body = actions.github.writes()[0].body["body"]
    # The out path with line breaks is refused now (located, never quoted back), nowhere echoed.
    assert "contains a line break or control character" in body and "pwned" not in body


def test_a_comment_github_refuses_is_a_warning_not_a_failed_check(actions: Actions) -> None:
    sha = git(actions.repo.root, "rev-parse", "HEAD")
    actions.pull_request(12, sha, sha)
    result = actions.run("run", "--command", "check", FLEXFORGE_CI_TOKEN="revoked")
    assert result.exit_code == 0, result.output
    assert "::warning title=flexforge::the pull-request comment was not posted: GitHub: GET" in result.output
    assert "revoked" not in result.output


def test_the_paid_build_guard_reads_the_projects_provider_setting(actions: Actions) -> None:
    text = (actions.repo.project / "flexforge.yaml").read_text()
    _open_pr(actions, fork=True)
    env = {k: v for k, v in actions.env.items() if k != "FLEXFORGE_CI_PROVIDER"}
    actions.env = env
    (actions.repo.project / "flexforge.yaml").write_text("settings:\n  provider: bfl\n" + text)
    refused = actions.run("run", "--command", "build")
    assert refused.exit_code == 2 and "refusing a paid build (bfl)" in refused.output
    (actions.repo.project / "flexforge.yaml").write_text("settings:\n  provider: draft\n" + text)
    free = actions.run("run", "--command", "build", "--comment", "false")
    assert free.exit_code == 0, free.output


def test_no_new_comment_without_changes_but_an_old_one_is_brought_up_to_date(actions: Actions) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.pull_request(13, base, base)
    assert actions.run("run", "--command", "plan").exit_code == 0
    assert actions.github.writes() == []
    _open_pr(actions, 13)
    assert actions.run("run", "--command", "plan").exit_code == 0
    actions.repo.edit("A flat logo reading 'GREEN'", "A flat logo")
    head = actions.repo.commit("never mind")
    actions.pull_request(13, base, head)
    assert actions.run("run", "--command", "plan").exit_code == 0
    assert [w.method for w in actions.github.writes()] == ["POST", "PATCH"]
    assert "no image changes" in actions.github.comments[13][0]["body"]


@pytest.mark.parametrize(
    "payload",
    [
        {"pull_request": {"number": 3, "base": "main", "head": None}},
        {"pull_request": {"number": "3", "base": {"sha": 7}, "head": {"repo": []}}},
        {"pull_request": []},
        [],
    ],
)
def test_odd_event_payloads_are_read_without_a_traceback(actions: Actions, payload: object) -> None:
    actions.event("pull_request", payload, "0" * 40)  # type: ignore[arg-type]
    result = actions.run("run", "--command", "plan")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_a_committed_rename_reads_as_flexforge_diff_would(actions: Actions) -> None:
    base = git(actions.repo.root, "rev-parse", "HEAD")
    actions.repo.edit("  logo:\n", "  brand-mark:\n")
    built = actions.repo.flexforge("build", "--provider", "draft")
    assert built.exit_code == 0, built.output
    head = actions.repo.commit("logo is now brand-mark")
    actions.pull_request(14, base, head)
    assert actions.run("run", "--command", "check").exit_code == 0
    review = json.loads(Path(actions.outputs()["review-json"]).read_text())
    assert [(c["id"], c["kind"], c["reasons"][0]) for c in review["changes"]] == [
        ("brand-mark", "renamed", "from logo")
    ]
    assert "renamed (from logo" in actions.github.writes()[0].body["body"]


def test_the_fan_in_merges_the_shard_runners_locks_then_restores_every_image_frozen(
    actions: Actions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from click.testing import CliRunner

    from flexforge.cli import cli

    monkeypatch.setenv("FLEXFORGE_REMOTE", f"file://{tmp_path / 'team-remote'}")
    actions.repo.edit("A flat logo", "A flat logo, in red")
    actions.repo.edit("seed: 1", "seed: 5")  # a new hero, and so a new square made from it
    sha = actions.repo.commit("new images")
    locks = tmp_path / "flexforge-shard-locks"
    for i in (1, 2):  # two runners, each on its own checkout, as the matrix jobs are
        runner = tmp_path / f"runner-{i}"
        shutil.copytree(actions.repo.project, runner, ignore=shutil.ignore_patterns(".flexforge"))
        built = CliRunner().invoke(
            cli, ["-C", str(runner), "build", "--provider", "draft", "--shard", f"{i}/2"]
        )
        assert built.exit_code == 0, built.output
        (locks / f"flexforge-lock-site-{i}").mkdir(parents=True)  # as download-artifact lays them out
        shutil.copy(runner / "flexforge.lock", locks / f"flexforge-lock-site-{i}" / "flexforge.lock")
    actions.event("push", {"before": sha}, sha)
    result = actions.run("run", "--command", "build", "--shard-locks", str(locks), "--args", "--frozen")
    assert result.exit_code == 0, result.output
    assert "::group::flexforge lock merge" in result.output
    assert "Merged 3 entries from 2 files" in result.output
    # The new hero comes from the remote (the draft renderer drew the same logo and square).
    assert "hero: restored (from remote, no API call)" in result.output and "0 generated" in result.output
    assert actions.outputs()["changes"] == "false"
    lock = json.loads((actions.repo.project / "flexforge.lock").read_text())["assets"]
    for entry in lock.values():
        data = (actions.repo.project / entry["out"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_shard_locks_must_be_there_and_only_for_a_build(actions: Actions, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-downloaded"
    empty.mkdir()
    result = actions.run("run", "--command", "build", "--shard-locks", str(empty))
    assert result.exit_code == 2 and "no *.lock file there" in result.output
    result = actions.run("run", "--command", "plan", "--shard-locks", str(empty))
    assert result.exit_code == 2 and "shard-locks is for the build command" in result.output
