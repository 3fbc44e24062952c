"""Issue 5, points 3-5 and 7 against the emulator: bad downloads, interrupted builds, two builds
at once, and the API key in every artifact of failing and succeeding runs.

Tests marked xfail(strict=True) show a bug that is still open; each reason names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from flexforge.emulator.testing import running_emulator
from flexforge.lockfile import Lock
from flexforge.store import Store
from tests.helpers import Project, Run, png
from tests.support.emulator import FAST_ENV, SECRET, serve_builds
from tests.support.spawn import spawn_flexforge, wait_for

LOCK_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "lock-v1.schema.json"


def build(project: Project, *args: str) -> Run:
    result = project.run("build", "--provider", "emulator", *args)
    assert "Traceback" not in result.stderr
    return result


def spawn(project: Project, *args: str) -> subprocess.Popen[str]:
    return spawn_flexforge("-C", str(project.root), *args)


def journal(project: Project) -> list[Path]:
    return sorted((project.root / ".flexforge" / "journal").glob("*.json"))


def lock_is_sound(project: Project) -> dict[str, Any]:
    """The lock matches its schema and every entry's output has the recorded bytes."""
    lock: dict[str, Any] = project.lock()
    jsonschema.validate(lock, json.loads(LOCK_SCHEMA.read_text()))
    for asset_id, entry in lock["assets"].items():
        digest = hashlib.sha256(project.read(entry["out"])).hexdigest()
        assert digest == entry["sha256"], asset_id
    return lock


def draft_render(request: Any) -> bytes:
    from flexforge.draft import render

    return bytes(render(request))


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (90, 20, 20)).save(buf, format=fmt)
    return buf.getvalue()


# -- 3. images downloaded from the provider ---------------------------------------------------------

BAD_DOWNLOADS: dict[str, tuple[dict[str, Any], str]] = {
    "wrong-size": (
        {"renderer": lambda r: encoded((r.width + 16, r.height), "PNG")},
        "expected 64x64, got 80x64",
    ),
    "wrong-format": ({"renderer": lambda r: encoded((r.width, r.height), "JPEG")}, "expected PNG, got JPEG"),
    "not-an-image": ({"renderer": lambda r: b"<html>502 Bad Gateway</html>"}, "not a decodable image"),
    "truncated": ({"faults": {"download:truncate": 1.0}}, "not a decodable image"),
}


@pytest.mark.parametrize("kind", list(BAD_DOWNLOADS))
def test_a_download_that_is_bad_every_time_fails_clearly_and_writes_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    knobs, reason = BAD_DOWNLOADS[kind]
    with serve_builds(monkeypatch, **knobs) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: "the one that breaks", seed: 1}
              b: {prompt: "built on image 1", seed: 2, references: [a]}
        """)
        result = build(project)
        assert result.exit_code == 1
        assert re.search(r"^  failed: a: .*is broken \(" + re.escape(reason), result.stderr, re.M), (
            result.stderr
        )
        assert "skipped: b: needs a, which failed" in result.stderr
        stats = emu.stats()
        assert stats["downloads"] >= 6  # retried (5 retries by default) before giving up
        # Never written as output, never cached, never locked.
        assert not (project.root / "assets").exists() or list((project.root / "assets").iterdir()) == []
        assert not (project.root / "flexforge.lock").exists() or lock_is_sound(project)["assets"] == {}
        assert not list((project.root / ".flexforge").glob("objects/*/*"))
        # The paid task stays journaled: the next build fetches it again instead of paying again.
        assert len(journal(project)) == 1
        again = build(project)
        assert again.exit_code == 1 and "polling task" in again.stderr and reason in again.stderr
        assert emu.stats()["submissions"] == stats["submissions"] == 1


def test_a_reference_broken_after_validation_is_refused_before_any_paid_call(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch) as emu:
        png(project.root / "brand" / "logo.png")
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: "logo from image 1", seed: 1, references: [brand/logo.png]}
        """)
        assert project.run("validate").exit_code == 0  # the validated manifest is cached
        (project.root / "brand" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
        result = build(project)
        assert result.exit_code == 1
        assert "failed: a: reference 'brand/logo.png': not a readable image" in result.stderr
        assert emu.stats()["submissions"] == 0


def test_an_output_that_cannot_be_written_fails_the_build(project: Project) -> None:
    """Regression (fixed in fb90bd8): an OSError while writing an output escaped the engine and was swallowed
    by gather(): no outcome, dependents vanished, exit 0, after the image was paid for."""
    project.manifest(f"""
        version: 1
        defaults: {{width: 64, height: 64}}
        assets:
          a: {{prompt: x, seed: 1, out: "img/{"n" * 300}.png"}}
          b: {{prompt: y, seed: 2, references: [a]}}
          c: {{prompt: z, seed: 3}}
    """)
    result = project.run("build", "--provider", "draft", "--keep-going")
    assert "Traceback" not in result.stderr
    assert result.exit_code == 1, result.stderr
    assert "failed: a:" in result.stderr or "assets.a.out" in result.stderr


# -- 4. interrupted builds --------------------------------------------------------------------------


def test_a_drawn_seed_survives_a_kill_so_its_task_is_not_paid_twice(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (fixed in fb90bd8): the engine ignored the seed pinned in .flexforge/seeds.json, drew a new
    one on resume, missed the journaled task and paid again."""
    with serve_builds(monkeypatch, latency=1.5) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: "no seed in the manifest"}
        """)
        proc = spawn(project, "build", "--provider", "emulator")
        wait_for(lambda: len(journal(project)) == 1, "the task to be journaled")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert emu.stats()["submissions"] == 1
        assert build(project).exit_code == 0
        assert emu.stats()["submissions"] == 1
        assert journal(project) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_a_submission_journals_the_task(
    project: Project, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    """Regression (fixed in fb90bd8): Ctrl-C or SIGTERM while a submission's answer was on its way cancelled
    it: the task was charged, never journaled, and paid again by the next build."""
    # The emulator creates the task, then holds its answer for 2 s: a slow network.
    with serve_builds(monkeypatch, script=("submit:hang",), hang_seconds=2.0, latency=0.1) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: "slow to answer", seed: 1}
        """)
        proc = spawn(project, "build", "--provider", "emulator")
        wait_for(lambda: emu.stats()["submissions"] == 1, "the task to be created")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, stderr
        assert build(project).exit_code == 0
        assert emu.stats()["submissions"] == 1


def test_a_kill_between_output_and_lock_is_not_mistaken_for_a_hand_edit(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (fixed in fb90bd8): a kill between the output rename and the coalesced lock write left new
    bytes under an old entry, and the next build called flexforge's own output 'edited by hand' and
    skipped its dependents."""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first version", seed: 1}
          b: {prompt: "built on image 1", seed: 2, references: [a]}
    """)
    assert project.build().exit_code == 0
    project.edit("first version", "second version")
    with monkeypatch.context() as patch:
        patch.setattr(Lock, "save", lambda self, **_: False)  # killed before the lock write
        assert project.build().exit_code == 0
    assert project.plan()["a"] != "drifted"
    result = project.build()
    assert result.exit_code == 0, result.stderr
    assert set(project.plan().values()) == {"none"}
    lock_is_sound(project)


def test_replace_after_a_kill_before_the_journal_cleanup_generates_anew(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (fixed in fb90bd8): a journal entry left by a kill after caching made `--replace` poll the
    old task and record its cost twice in the ledger."""
    with serve_builds(monkeypatch) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: one, seed: 1}
        """)
        with monkeypatch.context() as patch:
            patch.setattr(Store, "journal_remove", lambda self, key: None)  # killed right before it
            assert build(project).exit_code == 0
        assert build(project, "--replace", "a").exit_code == 0
        ledger = (project.root / ".flexforge" / "ledger.jsonl").read_text().splitlines()
        task_ids = [json.loads(line)["body"]["task_id"] for line in ledger]
        assert len(task_ids) == len(set(task_ids)), "one task's cost recorded twice"
        assert emu.stats()["submissions"] == 2


@pytest.mark.parametrize(
    "leftover",
    [
        "assets/.a.png.ff-k2x9q1ab.tmp",
        ".flexforge.lock.ff-k2x9q1ab.tmp",
    ],
)
def test_temp_files_left_by_a_killed_write_are_cleaned_up(project: Project, leftover: str) -> None:
    """Regression (fixed in fb90bd8 for outputs, 73d4b03 for the lock): a kill mid-write left
    `.NAME.XXXX.tmp` beside the file, in a folder users commit, for good."""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: one, seed: 1}
    """)
    assert project.build().exit_code == 0
    project.write(leftover, "half a file")  # what a kill during fsutil.replacing() leaves
    project.edit("one", "two")
    assert project.build().exit_code == 0
    assert not (project.root / leftover).exists()


ONE_SEEDED_ASSET = """
    version: 1
    defaults: {width: 64, height: 64}
    assets:
      a: {prompt: "first version", seed: 1}
"""


def test_an_older_image_put_back_by_hand_is_drifted_and_left_alone(project: Project) -> None:
    """Regression (fixed in 657d207): planner.decide() now skips the drift check for any bytes in the
    object cache, so an older flexforge image put back by hand (git checkout of one file) is planned
    'restore (missing)' and overwritten; only bytes made for the *current* key should be exempt"""
    project.manifest(ONE_SEEDED_ASSET)
    assert project.build().exit_code == 0
    older = project.read("assets/a.png")
    project.edit("first version", "second version")
    assert project.build().exit_code == 0
    (project.root / "assets" / "a.png").write_bytes(older)  # `git checkout HEAD~1 -- assets/a.png`
    assert project.plan()["a"] == "drifted"
    project.build()
    assert project.read("assets/a.png") == older


def test_an_older_image_put_back_with_git_checkout_in_a_repository_is_drifted_and_left_alone(
    project: Project,
) -> None:
    """The same, for real, in a git repository: `git checkout HEAD~1 -- assets/a.png` puts back
    an image a committed lock recorded there. It is not what HEAD holds, so it is a choice made
    by hand (drifted, left alone), not an older image the lock moved past (which a lock merge or
    `git checkout --theirs flexforge.lock` leaves, and a build replaces)."""
    git = ["git", "-C", str(project.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    project.manifest(ONE_SEEDED_ASSET)
    assert project.build().exit_code == 0
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    older = project.read("assets/a.png")
    project.edit("first version", "second version")
    assert project.build().exit_code == 0
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    subprocess.run([*git, "checkout", "HEAD~1", "--", "assets/a.png"], check=True)
    assert project.plan()["a"] == "drifted"
    project.build()
    assert project.read("assets/a.png") == older


def test_an_unexpected_error_in_one_asset_fails_the_build(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (fixed in 657d207): only ProviderError and OSError are caught in
    engine.Builder._run_step; any other exception in one asset (a Pillow error in final_size, a bug) is
    swallowed by gather(return_exceptions=True): the asset and its dependents vanish and the build exits
    0"""

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("flexforge.imaging.fit_cover", broken)
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: one, seed: 1, final_size: 60x60}
          b: {prompt: two, seed: 2, references: [a]}
          c: {prompt: three, seed: 3}
    """)
    result = project.run("build", "--provider", "draft", "--keep-going")
    assert result.exit_code == 1, result.stderr
    assert "failed: a:" in result.stderr and "skipped: b:" in result.stderr


def test_a_lock_that_breaks_its_schema_is_refused(project: Project) -> None:
    """Regression (fixed in 657d207): lockfile.read_lock checks only that the entries have the right names,
    not the banana"""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: one}
    """)
    assert project.build().exit_code == 0
    lock = project.lock()
    lock["assets"]["a"]["seed"] = "banana"  # a bad merge, a hand edit, a hostile pull request
    (project.root / "flexforge.lock").write_text(json.dumps(lock))
    for command in (("plan", "--provider", "draft"), ("build", "--provider", "draft")):
        result = project.run(*command)
        assert result.exit_code == 1
        assert "not a valid flexforge lock" in result.stderr


@pytest.mark.parametrize("blocked", [".flexforge", "flexforge.lock"])
def test_state_paths_of_the_wrong_kind_are_clear_errors(project: Project, blocked: str) -> None:
    """Regression (fixed in 657d207): a file where `.flexforge/` should be, or a folder named
    flexforge.lock, gives 'internal error: FileExistsError / IsADirectoryError' instead of a message
    naming it"""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: one, seed: 1}
    """)
    if blocked == ".flexforge":
        (project.root / blocked).write_text("a file, not a folder")
    else:
        (project.root / blocked).mkdir()
    result = project.build()
    assert result.exit_code == 1
    assert "internal error" not in result.stderr and blocked in result.stderr


# -- 5. two processes at once -----------------------------------------------------------------------


def test_two_builds_started_together_pay_once_and_leave_a_sound_lock(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, latency=0.3) as emu:
        project.manifest(
            "version: 1\ndefaults: {width: 64, height: 64}\nassets:\n"
            + "".join(f"  a{i}: {{prompt: 'asset {i}', seed: {i}}}\n" for i in range(10))
        )
        first, second = (
            spawn(project, "build", "--provider", "emulator"),
            spawn(project, "build", "--provider", "emulator"),
        )
        results = [proc.communicate(timeout=120) for proc in (first, second)]
        assert (first.returncode, second.returncode) == (0, 0), results
        # Whichever took the build lock second (usually after waiting for it) found nothing to do.
        assert "Up to date: 10 assets" in "".join(out for out, _ in results)
        assert len(lock_is_sound(project)["assets"]) == 10
        stats = emu.stats()
        assert (stats["submissions"], stats["duplicates"]) == (10, 0)


def test_accept_while_a_build_runs_keeps_the_builds_entries(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (fixed in fb90bd8): `accept` read the lock before waiting for the build lock and then saved
    its stale copy, dropping the build's entries."""
    with serve_builds(monkeypatch) as emu:
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: one, seed: 1}
              b: {prompt: two, seed: 2}
        """)
        assert build(project, "a").exit_code == 0
        (project.root / "assets" / "a.png").write_bytes(encoded((64, 64), "PNG"))  # a hand edit
        emu.configure(latency=2.0)
        running = spawn(project, "build", "b", "--provider", "emulator")
        wait_for(lambda: len(journal(project)) == 1, "the build to hold its lock")
        assert project.run("accept", "a").exit_code == 0  # waits for the build, then accepts
        running.communicate(timeout=60)
        assert sorted(lock_is_sound(project)["assets"]) == ["a", "b"]


# -- 7. the API key ---------------------------------------------------------------------------------


def assert_key_nowhere(project: Project, runs: list[Run]) -> None:
    for result in runs:
        assert SECRET not in result.stdout + result.stderr
    scanned = 0
    for path in project.root.rglob("*"):
        if path.is_file():
            scanned += 1
            assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"
    assert scanned > 2  # the manifest and .flexforge/ at least (lock, journal, ledger... when made)


def test_the_key_never_appears_in_any_artifact_of_a_failing_run(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def renderer(request: Any) -> bytes:
        return b"not an image" if "broken" in request.prompt else draft_render(request)

    with serve_builds(monkeypatch, renderer=renderer, moderate_request=("forbidden",)):
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              fine: {prompt: "a fine poster", seed: 1}
              refused: {prompt: "a forbidden poster", seed: 2}
              broken: {prompt: "a broken download", seed: 3}
              child: {prompt: "built on image 1", seed: 4, references: [broken]}
              unseeded: {prompt: "seed drawn and pinned"}
        """)
        runs = [build(project, "--keep-going"), build(project, "-vv", "--keep-going")]
        assert runs[0].exit_code == 1 and "failed: refused" in runs[0].stderr
        assert len(journal(project)) == 1  # the broken download's task, kept for the next build
        runs += [
            project.run("plan", "--json", "--provider", "emulator"),
            project.run("status", "--json", "--provider", "emulator"),
            project.run("-vv", "graph"),
            *(project.run("explain", a, "--provider", "emulator") for a in ("fine", "broken", "child")),
        ]
        assert_key_nowhere(project, runs)


def test_the_key_never_appears_in_any_artifact_of_a_successful_run(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_builds(monkeypatch, faults={"poll:500": 0.2, "download:truncate": 0.2}, seed=3):
        png(project.root / "brand" / "logo.png")
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: "a poster", seed: 1, references: [brand/logo.png]}
              b: {prompt: "built on image 1"}
        """)
        runs = [build(project, "-vv")]
        assert runs[0].exit_code == 0, runs[0].stderr
        runs += [
            project.run("plan", "--json", "--provider", "emulator"),
            project.run("status", "--json", "--provider", "emulator"),
            project.run("explain", "a", "--provider", "emulator"),
            build(project, "-vv"),
        ]
        assert_key_nowhere(project, runs)


class _EchoingApi(BaseHTTPRequestHandler):
    """A hostile or sloppy gateway that echoes the caller's key in every error it returns."""

    def do_POST(self) -> None:
        key = self.headers.get("x-key", "")
        body = json.dumps({"detail": f"upstream refused credentials x-key={key}"}).encode()
        self.send_response(500 if "flex" in self.path else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("model", ["flux-2-flex", "flux-2-pro"], ids=["500-retried", "403-fatal"])
def test_a_key_echoed_back_by_the_api_is_redacted(
    project: Project, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name, value in {**FAST_ENV, "BFL_API_BASE": f"http://127.0.0.1:{server.server_port}"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("BFL_API_KEY", SECRET)
        project.manifest(f"""
            version: 1
            defaults: {{width: 64, height: 64, model: {model}}}
            assets:
              a: {{prompt: one, seed: 1}}
        """)
        result = project.run("-vv", "build", "--provider", "bfl")
        assert result.exit_code == 1
        assert "upstream refused credentials" in result.stderr or "rejected the API key" in result.stderr
        assert_key_nowhere(project, [result])
    finally:
        server.shutdown()
        server.server_close()


def test_a_key_from_a_file_named_in_the_environment_is_used_and_never_copied(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secrets" / "bfl-key"  # a mounted CI secret, outside the project
    secret_file.parent.mkdir()
    secret_file.write_text(f"{SECRET}\n")
    with running_emulator(accepted_keys=(SECRET,)) as emu:
        for name, value in {
            **FAST_ENV,
            "BFL_API_BASE": emu.url,
            "BFL_API_KEY_FILE": str(secret_file),
        }.items():
            monkeypatch.setenv(name, value)
        project.manifest("""
            version: 1
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: one, seed: 1}
              b: {prompt: two}
        """)
        runs = [project.run("-vv", "build", "--provider", "bfl")]
        assert runs[0].exit_code == 0, runs[0].stderr
        assert emu.stats()["submissions"] == 2
        runs += [project.run("status", "--json", "--provider", "bfl"), project.run("explain", "b")]
        assert_key_nowhere(project, runs)


def test_keys_come_from_the_environment_only(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BFL_API_KEY_FILE", raising=False)
    with running_emulator() as emu:
        monkeypatch.setenv("BFL_API_BASE", emu.url)
        project.write(".env", f"BFL_API_KEY={SECRET}\n")
        project.write(".flexforge/credentials", f"{SECRET}\n")
        project.manifest("""
            version: 1
            vars: {note: "keys are not read from vars either"}
            defaults: {width: 64, height: 64}
            assets:
              a: {prompt: one, seed: 1}
        """)
        result = project.run("build", "--provider", "bfl")
        assert result.exit_code == 1
        assert "BFL_API_KEY is not set" in result.stderr and "--provider draft" in result.stderr
        assert emu.stats()["responses"] == {}  # not one request made
