"""End to end through the CLI: a key goes only to its API's hosts, whatever a cloned repository
or the API says, and the API's numbers never reach the lock or the ledger unless sane.

The attacker's host is a second loopback server that records every request it receives; builds
reach it as `localhost`, another host than the API's `127.0.0.1`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flexforge.lockfile import read_lock
from tests.helpers import Project, Run
from tests.support.emulator import FAST_ENV, SECRET, serve_builds
from tests.support.hostile import LoopbackServer, flux_api, json_answer, png_bytes, serving

COMET_SECRET = "sk-comet-5d1e9b7a3c2f4e6d8b0a-SECRET"
MANIFEST = """
    version: 1
    defaults: {width: 128, height: 96}
    assets:
      hero: {prompt: "a poster for Northwind coffee", seed: 7}
"""


@pytest.fixture
def attacker() -> Iterator[LoopbackServer]:
    with serving({"*": lambda handler: handler.send_bytes(png_bytes(128, 96), "image/png")}) as server:
        yield server


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """A scriptable FLUX.2 API that `flexforge build --provider bfl` talks to with SECRET."""
    with serving() as server:
        server.routes.update(flux_api(server.url))
        for name, value in {**FAST_ENV, "BFL_API_BASE": server.url(), "BFL_API_KEY": SECRET}.items():
            monkeypatch.setenv(name, value)
        yield server


def build(project: Project, *args: str) -> Run:
    result = project.run("build", *args)
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def content_key(project: Project, asset: str, provider: str) -> str:
    result = project.run("explain", asset, "--provider", provider)
    match = re.search(r"^  key .*-> ([0-9a-f]{64})$", result.stdout, re.M)
    assert match, result.stdout
    return match.group(1)


def strict_json(data: bytes) -> Any:
    """JSON as the standard says it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON")

    return json.loads(data, parse_constant=refuse)


def test_a_cloned_journal_entry_polling_another_host_never_gets_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attacker: LoopbackServer
) -> None:
    upstream = Project(tmp_path / "upstream")
    upstream.manifest(MANIFEST)
    key = content_key(upstream, "hero", "bfl")
    stolen = attacker.url("/v1/get_result?id=planted", host="localhost")
    entry = {
        "asset": "hero",
        "key": key,
        "provider": "bfl",
        "task_id": "planted",
        "polling_url": stolen,
        "submitted_at": time.time(),
        "cost_credits": None,
    }
    upstream.write(f".flexforge/journal/{key}.json", json.dumps(entry))
    git(upstream.root, "init", "-q")
    git(upstream.root, "add", "-f", "flexforge.yaml", ".flexforge/journal")
    git(upstream.root, "commit", "-qm", "a pull request from a stranger")
    git(tmp_path, "clone", "-q", str(upstream.root), "clone")
    clone = Project(tmp_path / "clone")
    assert (clone.root / ".flexforge" / "journal" / f"{key}.json").is_file()

    with serve_builds(monkeypatch) as emu:
        monkeypatch.setenv("BFL_API_BASE", emu.url)  # the real bfl client, the real key
        result = build(clone, "--provider", "bfl")

        assert attacker.received == []
        assert result.exit_code == 0, result.stderr
        assert emu.stats()["submissions"] == 1  # made afresh
    # The entry is not this machine's record: set aside with a warning before any provider sees it
    # (the provider's own refusal of its URL is tested below, with an entry this machine wrote).
    assert f".flexforge/journal/{key}.json" in result.stderr
    assert (clone.root / "assets" / "hero.png").is_file()


def test_a_journaled_polling_url_on_another_host_than_todays_base_gets_no_key(
    project: Project, monkeypatch: pytest.MonkeyPatch, api: LoopbackServer
) -> None:
    # Build 1 journals a task on the API at 127.0.0.1 (it never finishes in time); build 2 runs
    # with the base URL at another host. The journal entry is this machine's own, sealed and
    # valid: only the provider's check keeps the key from the host it names.
    project.manifest(MANIFEST)
    monkeypatch.setenv("FLEXFORGE_TASK_TIMEOUT", "0.3")
    api.routes["/poll"] = json_answer({"id": "task-1", "status": "Pending"})
    assert build(project, "--provider", "bfl").exit_code == 1
    assert api.received[-1].path == "/poll?id=task-1"

    with serving() as moved:
        moved.routes.update(flux_api(lambda path: moved.url(path, host="localhost")))
        monkeypatch.setenv("BFL_API_BASE", moved.url(host="localhost"))
        api.received.clear()
        result = build(project, "--provider", "bfl")

        assert api.received == []
        assert result.exit_code == 0, result.stderr
        # (after the credit balance, asked of the configured base before any paid submission)
        paid = [seen.path for seen in moved.received if seen.path != "/v1/credits"]
        assert paid[:1] == ["/v1/flux-2-flex"]
    assert "task-1" in result.stderr and "dropped" in result.stderr and "127.0.0.1" in result.stderr


def test_the_emulator_provider_never_sends_the_real_keys(
    project: Project, monkeypatch: pytest.MonkeyPatch, attacker: LoopbackServer
) -> None:
    # Whoever runs the emulator (or anything listening on its port) sees what it is sent.
    monkeypatch.setenv("FLEXFORGE_EMULATOR_URL", attacker.url())
    monkeypatch.setenv("BFL_API_KEY", SECRET)
    monkeypatch.setenv("COMETAPI_KEY", COMET_SECRET)
    project.manifest(MANIFEST)

    result = build(project, "--provider", "emulator")

    assert result.exit_code == 1  # the "emulator" answers nonsense
    # the credit balance, then the submission: each with the dummy key
    assert [seen.headers.get("x-key") for seen in attacker.received] == ["emulator", "emulator"]
    assert all(SECRET not in seen.text() and COMET_SECRET not in seen.text() for seen in attacker.received)


def test_the_emulator_log_never_shows_a_key_it_was_sent(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch) as emu:
        project.manifest(MANIFEST)
        assert build(project, "--provider", "emulator").exit_code == 0
        log = httpx.get(f"{emu.url}/_emulator/requests").text
    assert SECRET not in log and '"x-key": "[redacted]"' in log


def test_an_insane_api_cost_reaches_neither_lock_nor_ledger(project: Project, api: LoopbackServer) -> None:
    api.routes["/v1/flux-2-flex"] = lambda handler: handler.send_bytes(
        b'{"id": "task-1", "polling_url": "%s", "cost": NaN}' % api.url("/poll?id=task-1").encode(),
        "application/json",
    )
    project.manifest(MANIFEST)
    estimate = project.run("plan", "--json", "--provider", "bfl").json()["estimated_cost_usd"]

    result = build(project, "--provider", "bfl", "--max-cost", f"{estimate * 1.5:.4f}")

    assert result.exit_code == 0, result.stderr
    assert "the estimate counts instead" in result.stderr
    lock = strict_json((project.root / "flexforge.lock").read_bytes())
    assert lock["assets"]["hero"]["cost_usd"] == pytest.approx(estimate)
    (line,) = (project.root / ".flexforge" / "ledger.jsonl").read_bytes().splitlines()
    record = strict_json(line)["body"]
    assert record["cost_credits"] is None and record["cost_usd"] == pytest.approx(estimate)
    assert read_lock(project.root / "flexforge.lock").entries["hero"].cost_usd == pytest.approx(estimate)


def test_a_task_submitted_after_a_refused_journal_entry_stays_journaled_when_its_download_fails(
    project: Project, api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.manifest(MANIFEST)
    # Build 1: the task never finishes in time; flexforge journals it for the next build.
    monkeypatch.setenv("FLEXFORGE_TASK_TIMEOUT", "0.3")
    api.routes["/poll"] = json_answer({"id": "task-1", "status": "Pending"})
    assert build(project, "--provider", "bfl").exit_code == 1

    # Build 2: the key was rotated, so the old task is refused; a new one is paid for, and its
    # image cannot be fetched this time.
    api.routes["/poll"] = json_answer({"detail": "Not authenticated"}, 403)
    api.routes["/v1/flux-2-flex"] = json_answer({"id": "task-2", "polling_url": api.url("/poll2?id=task-2")})
    api.routes["/poll2"] = json_answer(
        {"id": "task-2", "status": "Ready", "result": {"sample": api.url("/gone"), "seed": 7}}
    )
    api.routes["/gone"] = json_answer({"detail": "Signature expired"}, 403)
    second = build(project, "--provider", "bfl")
    assert second.exit_code == 1
    assert "task-1" in second.stderr and "403" in second.stderr

    # Build 3: the paid task-2 is fetched, not paid for again.
    api.routes["/gone"] = api.routes["/image"]
    api.received.clear()
    third = build(project, "--provider", "bfl")
    assert third.exit_code == 0, third.stderr
    paths = [seen.path for seen in api.received]
    assert "/v1/flux-2-flex" not in paths and "/poll2?id=task-2" in paths
