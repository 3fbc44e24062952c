"""A team remote shared by separate flexforge processes: one payment per key across machines.

Runners are real `python -m flexforge` processes, the API is the emulator on loopback, and the
remote is a real folder or a real S3-compatible server (moto's server mode).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flexforge.remote import RELEASED, FsspecRemote, open_remote
from tests.helpers import Project
from tests.support.azure import AzureServer, azure_env, azure_server
from tests.support.emulator import serve_builds
from tests.support.gcs import GCSServer, gcs_env, gcs_server, running_ignoring_gcs, use_gcs
from tests.support.s3 import S3Server, s3_env, s3_server
from tests.support.spawn import spawn_flexforge, wait_for

__all__ = ["azure_env", "azure_server", "gcs_env", "gcs_server", "s3_env", "s3_server"]


@pytest.fixture(params=["file", "s3", "gcs", "azure"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        url = f"file://{tmp_path / 'team-share'}"
    elif request.param == "gcs":
        gcs: GCSServer = request.getfixturevalue("gcs_env")
        url = f"gs://{gcs.new_bucket()}/flexforge"
    elif request.param == "azure":
        azure: AzureServer = request.getfixturevalue("azure_env")
        url = f"az://{azure.new_container()}/flexforge"
    else:
        server: S3Server = request.getfixturevalue("s3_env")
        url = f"s3://{server.new_bucket()}/flexforge"
    monkeypatch.setenv("FLEXFORGE_REMOTE", url)
    monkeypatch.setenv("FLEXFORGE_LEASE_POLL", "0.05")
    return url


def manifest(count: int, *, seeded: bool = True) -> str:
    lines = ["version: 1", "defaults: {width: 64, height: 64}", "assets:"]
    for i in range(count):
        # Every other asset without a seed: machines must still agree on its key.
        seed = f", seed: {i + 1}" if seeded or i % 2 else ""
        lines.append(f'  a{i:03d}: {{prompt: "team image number {i}"{seed}}}')
    return "\n".join(lines) + "\n"


def copies(tmp_path: Path, text: str, n: int) -> list[Project]:
    """n clones of one project, as n machines would have them."""
    projects = []
    for i in range(n):
        project = Project(tmp_path / f"machine-{i}")
        project.manifest(text)
        projects.append(project)
    return projects


def spawn(project: Project, *args: str) -> subprocess.Popen[str]:
    return spawn_flexforge("-C", str(project.root), *args)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, err


def leases(url: str) -> list[dict[str, Any]]:
    remote = open_remote(url)
    remote.fs.invalidate_cache()
    try:
        names = remote.fs.find(f"{remote.root}/leases")
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if str(name).endswith(".json") and "/probe-" not in str(name):
            with contextlib.suppress(FileNotFoundError):
                data = bytes(remote.fs.cat_file(name))
                if data != RELEASED:  # a released lease on gs://: no lease (remote.GCSConditional)
                    found.append(json.loads(data))
    return found


def remote_objects(remote: FsspecRemote) -> dict[str, bytes]:
    remote.fs.invalidate_cache()
    try:
        listed = remote.fs.find(f"{remote.root}/images", detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for name in (n for n, info in listed.items() if info.get("type") == "file"):
        base = str(name).rsplit("/", 1)[-1]
        if len(base) == 69 and base.endswith(".json"):
            continue  # a folder's key record, beside its image
        if len(base) != 64:
            # A folder's temp file, left by a kill mid-write: never under an object's name, and
            # never read as one (flexforge reads only 64-hex names).
            assert ".tmp-" in base, base
            continue
        with contextlib.suppress(FileNotFoundError):  # listed while another process writes
            found[base] = bytes(remote.fs.cat_file(name))
    return found


def outputs(project: Project) -> dict[str, str]:
    return {asset: entry["sha256"] for asset, entry in project.lock()["assets"].items()}


def test_two_runners_racing_on_the_same_50_keys_pay_each_key_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    with serve_builds(monkeypatch, latency=0.3) as emu:
        a, b = copies(tmp_path, manifest(50, seeded=False), 2)
        runs = [spawn(p, "build", "--provider", "emulator", "--jobs", "8") for p in (a, b)]
        results = [finish(r) for r in runs]
        assert [code for code, _ in results] == [0, 0], results
        assert not [err for _, err in results if "no leases" in err]  # the probe let leasing on
        assert emu.stats()["submissions"] == 50
        assert outputs(a) == outputs(b)
        assert len(outputs(a)) == 50
        # Each image is in the remote, verified; no lease is left behind.
        objects = remote_objects(open_remote(remote_url))
        assert set(outputs(a).values()) <= set(objects)
        assert all(hashlib.sha256(data).hexdigest() == sha for sha, data in objects.items())
        assert leases(remote_url) == []


def killed_once_leases_name_tasks(project: Project, remote_url: str, tasks: int) -> None:
    """A runner SIGKILLed once `tasks` of its leases name the task it submitted."""
    proc = spawn(project, "build", "--provider", "emulator", "--jobs", "8")
    wait_for(
        lambda: len([x for x in leases(remote_url) if x.get("task_id")]) == tasks,
        "every lease to name its task",
        timeout=60,
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_a_runner_killed_after_submitting_is_finished_by_another_without_paying_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    with serve_builds(monkeypatch, latency=4.0) as emu:
        first, second = copies(tmp_path, manifest(6, seeded=False), 2)
        killed_once_leases_name_tasks(first, remote_url, 6)
        assert emu.stats()["submissions"] == 6
        # Another machine: no journal, no seeds, only the remote's leases.
        code, err = finish(spawn(second, "build", "--provider", "emulator"))
        assert code == 0, err
        assert emu.stats()["submissions"] == 6
        assert "another runner" in err
        assert len(outputs(second)) == 6
        assert leases(remote_url) == []  # the dead runner's leases are cleared once pushed


def test_expired_leases_of_a_killed_runner_are_taken_over_once_by_two_racing_runners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    """The holder dies and its leases expire: two runners started together race to take each one
    over (compare-and-swap on its version); the winner resumes the task the lease names, the
    loser follows it, and nobody pays again."""
    monkeypatch.setenv("FLEXFORGE_LEASE_TTL", "2")
    with serve_builds(monkeypatch, latency=4.0) as emu:
        first, *others = copies(tmp_path, manifest(6, seeded=False), 3)
        killed_once_leases_name_tasks(first, remote_url, 6)
        wait_for(lambda: all(x["expires_at"] < time.time() for x in leases(remote_url)), "expiry", 30)
        results = [finish(r) for r in [spawn(p, "build", "--provider", "emulator") for p in others]]
        assert [code for code, _ in results] == [0, 0], results
        errs = "".join(err for _, err in results)
        assert "no leases" not in errs
        assert errs.count("took over an expired lease") >= 1
        assert emu.stats()["submissions"] == 6
        assert outputs(others[0]) == outputs(others[1]) and len(outputs(others[0])) == 6
        assert leases(remote_url) == []


def test_a_read_only_remote_is_used_for_restores_and_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    with serve_builds(monkeypatch, latency=0.05) as emu:
        maker, reader = copies(tmp_path, manifest(4), 2)
        code, err = finish(spawn(maker, "build", "--provider", "emulator"))
        assert code == 0, err
        reader.edit("team image number 3", "a change only the pull request has")
        remote = open_remote(remote_url)
        remote.fs.invalidate_cache()
        before = sorted(str(n) for n in remote.fs.find(remote.root))
        monkeypatch.setenv("FLEXFORGE_REMOTE_READONLY", "1")
        code, err = finish(spawn(reader, "build", "--provider", "emulator"))
        assert code == 0, err
        remote.fs.invalidate_cache()
        assert sorted(str(n) for n in remote.fs.find(remote.root)) == before
        assert emu.stats()["submissions"] == 5  # 4, then only the changed one


def test_a_fresh_clone_plans_restore_remote_and_builds_with_no_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    with serve_builds(monkeypatch, latency=0.05) as emu:
        maker, clone = copies(tmp_path, manifest(3), 2)
        assert maker.run("build", "--provider", "emulator").exit_code == 0
        plan = clone.run("plan", "--provider", "emulator")
        assert plan.exit_code == 0, plan.stderr
        assert plan.stdout.count("restore (remote)") == 3, plan.stdout
        result = clone.run("build", "--provider", "emulator")
        assert result.exit_code == 0, result.stderr
        assert "3 restored" in result.stderr and "from remote, no API call" in result.stderr
        assert emu.stats()["submissions"] == 3
        assert outputs(clone) == outputs(maker)
        for entry in clone.lock()["assets"].values():
            assert hashlib.sha256(clone.read(entry["out"])).hexdigest() == entry["sha256"]


def test_a_tampered_remote_object_is_never_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    with serve_builds(monkeypatch, latency=0.05) as emu:
        maker, clone = copies(tmp_path, manifest(1), 2)
        assert maker.run("build", "--provider", "emulator").exit_code == 0
        remote = open_remote(remote_url)
        ((key, sha),) = remote.held()
        # The object cut short and padded back to its length: the digest gives it away.
        path = remote._image(key, sha)
        remote.fs.pipe_file(path, bytes(remote.fs.cat_file(path))[:-20] + b"\0" * 20)
        result = clone.run("build", "--provider", "emulator")
        assert result.exit_code == 0, result.stderr
        assert "damaged" in result.stderr
        assert emu.stats()["submissions"] == 2  # generated again rather than trusting it
        assert hashlib.sha256(clone.read("assets/a000.png")).hexdigest() == outputs(clone)["a000"]


def test_a_remote_that_cannot_be_reached_is_a_warning_not_a_failure(
    project: Project, monkeypatch: pytest.MonkeyPatch, s3_env: S3Server
) -> None:
    monkeypatch.setenv("FLEXFORGE_REMOTE", "s3://team-bucket/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    project.manifest(manifest(1))
    result = project.run("plan", "--provider", "draft")
    assert result.exit_code == 0
    assert "cannot be listed" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_then_pull_moves_every_image_and_a_build_restores_them_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    monkeypatch.setenv("FLEXFORGE_REMOTE", "none")
    maker, clone = copies(tmp_path, manifest(12), 2)
    assert maker.build().exit_code == 0  # made with no remote at all
    monkeypatch.setenv("FLEXFORGE_REMOTE", remote_url)
    pushed = maker.run("push")
    assert pushed.exit_code == 0, pushed.stderr
    assert "Pushed 12 images" in pushed.stderr
    assert "Pushed 0 images" in maker.run("push").stderr  # nothing left to do
    shutil.copy(maker.root / "flexforge.lock", clone.root / "flexforge.lock")
    pulled = clone.run("pull")
    assert pulled.exit_code == 0, pulled.stderr
    assert "Pulled 12 images" in pulled.stderr
    monkeypatch.setenv("FLEXFORGE_REMOTE", "none")  # the cache alone now has them
    result = clone.build()
    assert result.exit_code == 0 and "12 restored" in result.stderr, result.stderr
    assert outputs(clone) == outputs(maker)


def test_pull_never_caches_an_object_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    maker, clone = copies(tmp_path, manifest(2), 2)
    assert maker.build().exit_code == 0
    remote = open_remote(remote_url)
    sha = outputs(maker)["a000"]
    key = maker.lock()["assets"]["a000"]["key"]
    remote.fs.pipe_file(remote._image(key, sha), b"\x89PNG not really")
    shutil.copy(maker.root / "flexforge.lock", clone.root / "flexforge.lock")
    pulled = clone.run("pull")
    assert pulled.exit_code == 1
    assert "not pulled: a000: missing or damaged in the remote" in pulled.stderr
    assert not clone.root.joinpath(".flexforge").exists() or not Store_has(clone, sha)


def Store_has(project: Project, sha: str) -> bool:
    from flexforge.store import Store

    return Store(project.root / ".flexforge").has_object(sha)


def test_a_push_killed_midway_leaves_no_object_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    monkeypatch.setenv("FLEXFORGE_REMOTE", "none")
    (maker,) = copies(tmp_path, manifest(150).replace("64, height: 64", "512, height: 512"), 1)
    assert maker.build().exit_code == 0
    monkeypatch.setenv("FLEXFORGE_REMOTE", remote_url)
    remote = open_remote(remote_url)
    killed_mid_push = 0
    for _ in range(3):
        proc = spawn(maker, "push", "--jobs", "1")  # one at a time: the kill lands mid-push
        started = functools.partial(lambda p: len(remote_objects(remote)) > 0 or p.poll() is not None, proc)
        wait_for(started, "the first upload")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        held = remote_objects(remote)
        killed_mid_push += 0 < len(held) < 150
        for sha, data in held.items():
            assert hashlib.sha256(data).hexdigest() == sha
        # Every image listed comes back whole with its key record (written first on a folder).
        for key, (sha, _) in open_remote(remote_url).images().items():
            fetched = remote.fetch(key, sha)
            assert fetched is not None and fetched.record is not None and sha in held
    assert killed_mid_push >= 1  # the kill did land during the push
    assert maker.run("push").exit_code == 0
    assert len(remote_objects(remote)) == 150


class _Listener:
    """An HTTP server on another loopback address that records whatever reaches it."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.seen: list[str] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(f"{self.path} {dict(self.headers)}")
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_polling_url_planted_in_a_lease_never_receives_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_url: str
) -> None:
    from flexforge import keys
    from flexforge.manifest import load_manifest
    from flexforge.remote import Lease
    from tests.support.emulator import SECRET

    listener = _Listener()
    try:
        with serve_builds(monkeypatch, latency=0.05) as emu:
            (victim,) = copies(tmp_path, manifest(1), 1)
            # The key of a000, as the remote will see it: planted by someone with write access.
            asset = load_manifest(victim.root / "flexforge.yaml").assets["a000"]
            content_key = keys.content_key(asset, "emulator", 1, []).key
            planted = Lease(
                key=content_key,
                holder="mallory",
                expires_at=time.time() + 600,
                asset="a000",
                provider="emulator",
                task_id="stolen-task",
                polling_url=f"{listener.url}/v1/get_result?id=stolen-task",
            )
            remote = open_remote(remote_url)
            remote.fs.makedirs(f"{remote.root}/leases", exist_ok=True)
            assert remote.lease_acquire(planted) is not None
            result = victim.run("build", "--provider", "emulator")
            assert result.exit_code == 0, result.stderr
            assert "refused" in result.stderr
            assert emu.stats()["submissions"] == 1  # paid here rather than trusting that URL
    finally:
        listener.close()
    assert not any(SECRET in line for line in listener.seen)
    assert listener.seen == []


def test_a_gcs_server_that_ignores_generation_match_shares_images_but_refuses_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gcp-storage-emulator, a real GCS JSON API server, accepts `ifGenerationMatch=0` twice: the
    probe finds it out, leasing is refused with a message, and images still travel."""
    with running_ignoring_gcs() as server:
        use_gcs(server, monkeypatch)
        url = f"gs://{server.new_bucket()}/flexforge"
        monkeypatch.setenv("FLEXFORGE_REMOTE", url)
        with serve_builds(monkeypatch, latency=0.05) as emu:
            maker, clone = copies(tmp_path, manifest(3), 2)
            made = maker.run("build", "--provider", "emulator")
            assert made.exit_code == 0, made.stderr
            assert (
                f"remote {url}: no leases ({url} ignores conditional writes (a create-only write was "
                "accepted twice)); images are still shared"
            ) in made.stderr
            remote = open_remote(url)
            remote.fs.invalidate_cache()
            names = [str(n) for n in remote.fs.find(remote.root)]
            assert not [n for n in names if "/leases/" in n]  # the probe cleaned up after itself
            assert len([n for n in names if "/images/" in n and not n.endswith(".json")]) == 3
            restored = clone.run("build", "--provider", "emulator")
            assert restored.exit_code == 0, restored.stderr
            assert "3 restored" in restored.stderr
            assert emu.stats()["submissions"] == 3


def test_push_without_a_remote_says_where_the_manifest_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's way (`settings: remote: url:` in the manifest), not a flexforge.toml that
    flexforge never reads."""
    monkeypatch.delenv("FLEXFORGE_REMOTE", raising=False)
    (project,) = copies(tmp_path, manifest(1), 1)
    result = project.run("push")
    assert result.exit_code == 1
    assert "settings:" in result.stderr and "flexforge.toml" not in result.stderr, result.stderr
    assert "flexforge.toml" not in project.run("push", "--help").stdout


def test_push_reads_no_lock_path_outside_the_project_or_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed lock's entries naming `../outside.png` or a path through a link to a folder
    outside, with the recorded bytes there: push reads neither (nothing of this machine goes to
    the remote). Before, `../../dev/zero` filled memory the same way: it is left out here so
    that a regression fails this test instead of the machine."""
    monkeypatch.setenv("FLEXFORGE_REMOTE", "none")
    (project,) = copies(tmp_path, manifest(1), 1)
    assert project.build().exit_code == 0
    shutil.rmtree(project.root / ".flexforge" / "objects")
    secret = project.read("assets/a000.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(secret)
    (tmp_path / "outside.png").write_bytes(secret)
    (project.root / "linked").symlink_to(outside)
    lock = project.lock()
    entry = lock["assets"]["a000"]
    for i, out in enumerate(["../outside.png", "linked/x.png"]):
        lock["assets"][f"evil{i}"] = {**entry, "out": out, "key": f"{i + 1}" * 64}
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    (project.root / "assets/a000.png").unlink()
    monkeypatch.setenv("FLEXFORGE_REMOTE", f"file://{tmp_path / 'share'}")
    result = project.run("push")
    assert "Pushed 0 images" in result.stderr, result.stderr
    for i in range(2):
        assert f"not pushed: evil{i}" in result.stderr
