"""A team's day across clones: two clones of one bare repository, branches, a lock conflict
resolved both ways, a rename, a moved output, a reverted prompt and an agency's file, with the
emulator counting every paid submission. The repository is the cache: bytes that exist in the
working tree or in git history cost nothing, anywhere."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flexforge.emulator.testing import RunningEmulator
from tests.helpers import Project, Run, png
from tests.support.emulator import serve_builds

MANIFEST = """\
version: 1
settings:
  provider: emulator
defaults: {width: 256, height: 256}
assets:
  hero:
    prompt: "A poster with the headline 'Brew bold'"
  banner:
    prompt: "A wide banner from image 1"
    references: [hero]
  square:
    prompt: "An Instagram square with the call to action 'Order now'"
    out: assets/square.png
    output_format: png
    height: 256
  leaf:
    prompt: "A coffee leaf"
    seed: 3
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0 or args[0] == "merge", done.stderr
    return done.stdout.strip()


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    for name in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{name}_NAME", "t")
        monkeypatch.setenv(f"GIT_{name}_EMAIL", "t@example.com")
    with serve_builds(monkeypatch) as emulator:
        yield emulator


class Team:
    def __init__(self, base: Path, emu: RunningEmulator) -> None:
        self.base = base
        self.emu = emu
        self.origin = base / "origin.git"
        git(base, "init", "-q", "--bare", "-b", "main", str(self.origin))

    def clone(self, name: str) -> Project:
        git(self.base, "clone", "-q", str(self.origin), name)
        git(self.base / name, "checkout", "-q", "-B", "main")
        return Project(self.base / name)

    def submissions(self) -> int:
        return int(self.emu.stats()["submissions"])

    def build(self, project: Project, *args: str) -> tuple[Run, int]:
        before = self.submissions()
        result = project.run("build", *args)
        assert "Traceback" not in result.stderr
        return result, self.submissions() - before


def commit(project: Project, message: str, *, push: str | None = None) -> None:
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", message)
    if push:
        git(project.root, "push", "-q", "origin", push)


def plan(project: Project) -> dict[str, str]:
    result = project.run("plan", "--json")
    assert result.exit_code == 0, result.stderr
    return {
        a["id"]: a["action"] + (f" ({a['source']})" if a["source"] else "") for a in result.json()["assets"]
    }


def assert_matches_manifest(project: Project) -> None:
    """Plan clean, and every lock entry names the manifest's path and the bytes there."""
    assert set(plan(project).values()) == {"none"}, plan(project)
    for entry in project.lock()["assets"].values():
        data = (project.root / entry["out"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_a_day_of_team_work_pays_only_for_what_is_new(tmp_path: Path, emu: RunningEmulator) -> None:
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    alice.write("flexforge.yaml", MANIFEST)
    result, paid = team.build(alice)
    assert result.exit_code == 0, result.stderr
    assert paid == 4
    commit(alice, "images", push="main")

    # A fresh clone plans up to date and builds nothing.
    bob = team.clone("bob")
    assert set(plan(bob).values()) == {"none"}
    assert team.build(bob)[1] == 0

    # Two branches: Alice changes the square's call to action, Bob the banner and the square's
    # height. Their locks conflict on the square; their manifests merge cleanly.
    git(alice.root, "checkout", "-qb", "cta")
    alice.edit("'Order now'", "'Order today'")
    result, paid = team.build(alice)
    assert paid == 1, result.stderr
    commit(alice, "new call to action", push="cta")
    bob.edit("A wide banner", "A wider banner")
    bob.edit("height: 256\n", "height: 320\n")
    result, paid = team.build(bob)
    assert paid == 2, result.stderr
    commit(bob, "wider banner, taller square", push="main")

    # Bob merges and takes their lock, as the README says; Carol, on a fresh clone, takes ours.
    # Either way the merged square is a new request (paid once each: nobody has it yet), and the
    # banner Bob made and the square Alice made are never "edited by hand".
    git(bob.root, "fetch", "-q")
    git(bob.root, "merge", "-q", "origin/cta", "-m", "merge")
    assert "flexforge.lock" in git(bob.root, "diff", "--name-only", "--diff-filter=U")
    git(bob.root, "checkout", "--theirs", "flexforge.lock")
    bob_plan = plan(bob)
    assert bob_plan["square"] == "regenerate" and bob_plan["banner"] == "restore (in place)", bob_plan
    result, paid = team.build(bob)
    assert (result.exit_code, paid) == (0, 1), result.stderr
    assert "drifted" not in result.stderr
    assert_matches_manifest(bob)
    carol = team.clone("carol")
    git(carol.root, "merge", "-q", "origin/cta", "-m", "merge")
    git(carol.root, "checkout", "--ours", "flexforge.lock")
    assert plan(carol) == {"hero": "none", "banner": "none", "square": "regenerate", "leaf": "none"}
    result, paid = team.build(carol)
    assert (result.exit_code, paid) == (0, 1), result.stderr
    assert_matches_manifest(carol)
    commit(bob, "merge cta", push="main")

    # A rename, a moved output, a reverted prompt: free on a fresh clone (and in Bob's).
    bob.edit("  hero:", "  masthead:")
    bob.edit("references: [hero]", "references: [masthead]")
    bob.edit("    seed: 3", "    seed: 3\n    out: site/leaf.png")
    bob.edit("'Order today'", "'Order now'")  # back to what Bob built before the merge
    commit(bob, "rename hero, move leaf, revert the call to action", push="main")
    dave = team.clone("dave")
    dave_plan = plan(dave)
    assert dave_plan["masthead"] == "rename (working tree: assets/hero.png)"
    assert dave_plan["leaf"] == "restore (working tree: assets/leaf.png)"
    assert dave_plan["square"].startswith("restore (git "), dave_plan
    assert dave_plan["banner"] == "none"  # same upstream bytes, same key
    result, paid = team.build(dave)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert_matches_manifest(dave)
    seeds = {k: v["seed"] for k, v in alice.lock()["assets"].items()}
    assert dave.lock()["assets"]["masthead"]["seed"] == seeds["hero"]  # the pinned seed came along

    # An agency's image at a new asset's path is never overwritten; accept adopts it.
    agency = png(dave.root / "assets/partner.png", size=(256, 256), color=(10, 200, 90))
    agency_bytes = agency.read_bytes()
    dave.write(
        "flexforge.yaml", dave.read("flexforge.yaml").decode() + '  partner:\n    prompt: "Partner logo"\n'
    )
    assert plan(dave)["partner"] == "conflict"
    result, paid = team.build(dave)
    assert paid == 0 and "conflict" in result.stderr
    assert agency.read_bytes() == agency_bytes
    assert dave.run("accept", "partner").exit_code == 0
    assert_matches_manifest(dave)
    assert agency.read_bytes() == agency_bytes

    # A real change elsewhere: exactly that asset (and what is built on it) is paid for.
    dave.edit("A poster with the headline 'Brew bold'", "A poster with the headline 'Brew bolder'")
    result, paid = team.build(dave)
    assert paid == 2, result.stderr  # masthead and the banner built on it
    assert_matches_manifest(dave)
    # The one request sent twice: the merged square, made by Bob and Carol before either pushed.
    assert team.emu.stats()["duplicates"] == 1


def test_a_fresh_clone_brings_every_reverted_output_back_from_history_free(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """Prompts edited, built, committed, then reverted: a fresh clone restores every output of the
    first version from git history in one pass, no API call, no temp file left, plan clean after."""
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    assets = "".join(
        f'  a{i}:\n    prompt: "poster {i}"\n' + ("    references: [a0]\n" if i else "") for i in range(6)
    )
    alice.manifest(MANIFEST.split("assets:")[0] + "assets:\n" + assets)
    first, paid = team.build(alice)
    assert first.exit_code == 0 and paid == 6, first.stderr
    commit(alice, "v1", push="main")
    v1 = {p.name: p.read_bytes() for p in (alice.root / "assets").iterdir()}
    alice.manifest((alice.root / "flexforge.yaml").read_text().replace('"poster', '"v2 poster'))
    assert team.build(alice)[1] == 6
    commit(alice, "v2")
    alice.manifest((alice.root / "flexforge.yaml").read_text().replace('"v2 poster', '"poster'))
    commit(alice, "revert the prompts", push="main")
    fresh = team.clone("fresh")
    result, paid = team.build(fresh)
    assert result.exit_code == 0 and paid == 0, result.stderr
    assert "6 restored" in result.stderr
    assert {p.name: p.read_bytes() for p in (fresh.root / "assets").iterdir()} == v1
    assert not list(fresh.root.rglob("*.ff-*.tmp"))
    assert_matches_manifest(fresh)


def test_a_project_folder_moved_in_its_repository_still_restores_from_before_the_move(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """The project lived in `site/`, was built twice, then `git mv site web`: on a fresh clone a
    revert to the first prompts restores from the commits before the move, free."""
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    site = Project(alice.root / "site")
    site.manifest(MANIFEST)
    assert team.build(site)[1] == 4
    commit(alice, "v1")
    v1 = {p.name: p.read_bytes() for p in (site.root / "assets").iterdir()}
    site.manifest((site.root / "flexforge.yaml").read_text().replace("Brew bold", "Brew bolder"))
    assert team.build(site)[1] >= 1
    commit(alice, "v2")
    git(alice.root, "mv", "site", "web")
    commit(alice, "move the project", push="main")
    fresh = team.clone("fresh")
    web = Project(fresh.root / "web")
    web.manifest((web.root / "flexforge.yaml").read_text().replace("Brew bolder", "Brew bold"))
    planned = plan(web)
    assert planned["hero"].startswith("restore (git "), planned
    result, paid = team.build(web)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert {p.name: p.read_bytes() for p in (web.root / "assets").iterdir()} == v1
    assert_matches_manifest(web)


def test_a_lock_naming_uncommitted_outputs_never_promises_a_free_restore_from_git(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """Outputs gitignored: the committed lock names bytes no commit holds. A fresh clone's plan
    says they are made again (and what that costs), never `restore (git ...)` that the build
    would then pay for; the build pays exactly what the plan said."""
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    alice.manifest(MANIFEST)
    (alice.root / ".gitignore").write_text("assets/\n")
    built, paid = team.build(alice)
    assert built.exit_code == 0 and paid == 4, built.stderr
    commit(alice, "outputs not committed", push="main")
    fresh = team.clone("fresh")
    planned = plan(fresh)
    assert not [a for a in planned.values() if "git" in a], planned
    assert all(a.startswith(("create", "regenerate")) for a in planned.values()), planned
    estimate = fresh.run("plan", "--json").json()
    result, paid = team.build(fresh)
    assert result.exit_code == 0, result.stderr
    assert paid == sum(1 for a in estimate["assets"] if a["action"] != "none") == 4


def _merge_with_lock_conflict(team: Team) -> tuple[Project, dict[str, Any]]:
    """Alice's branch changes a prompt and adds a seedless asset; Bob adds another on main.
    Bob merges: the manifest (resolved keeping both) and the lock conflict. Returns Bob's clone
    mid-merge, with Alice's lock."""
    alice = team.clone("alice")
    alice.manifest(MANIFEST)
    assert team.build(alice)[1] == 4
    commit(alice, "images", push="main")
    bob = team.clone("bob")
    git(alice.root, "checkout", "-qb", "alt")
    alice.edit("'Brew bold'", "'Brew bolder'")
    alice.write("flexforge.yaml", alice.read("flexforge.yaml").decode() + '  zz:\n    prompt: "From Alice"\n')
    assert team.build(alice)[1] == 3  # hero, the banner built on it, zz
    commit(alice, "bolder hero, zz", push="alt")
    bob.write("flexforge.yaml", bob.read("flexforge.yaml").decode() + '  zy:\n    prompt: "From Bob"\n')
    assert team.build(bob)[1] == 1
    commit(bob, "zy")
    git(bob.root, "fetch", "-q")
    git(bob.root, "merge", "-q", "origin/alt", "-m", "merge")
    conflicted = git(bob.root, "diff", "--name-only", "--diff-filter=U").split()
    assert "flexforge.lock" in conflicted and "flexforge.yaml" in conflicted
    merged = alice.read("flexforge.yaml").decode() + '  zy:\n    prompt: "From Bob"\n'
    bob.write("flexforge.yaml", merged)
    return bob, alice.lock()


def test_a_lock_taken_from_ours_mid_merge_costs_nothing_for_the_other_branchs_images(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """`git checkout --ours flexforge.lock` during the merge, then `build` before committing:
    the images the merge brought in (a changed prompt, an asset the other branch added with a
    seed it drew) are in place and in the merged branch's history: restored in place, free,
    the drawn seed kept; never paid for again, never a `conflict`."""
    team = Team(tmp_path, emu)
    bob, theirs = _merge_with_lock_conflict(team)
    git(bob.root, "checkout", "--ours", "flexforge.lock")
    planned = plan(bob)
    assert planned["hero"] == planned["banner"] == planned["zz"] == "restore (in place)", planned
    result, paid = team.build(bob)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert "conflict" not in result.stderr
    assert_matches_manifest(bob)
    assert bob.lock()["assets"]["zz"]["seed"] == theirs["assets"]["zz"]["seed"]


def test_a_lock_taken_from_ours_and_committed_keeps_the_other_branchs_drawn_seeds(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """The same merge committed before building: the seedless asset the other branch added
    has no entry in the lock, but its committed bytes are in place and its seed is in history:
    `restore (in place)`, not a `conflict` that no build clears."""
    team = Team(tmp_path, emu)
    bob, theirs = _merge_with_lock_conflict(team)
    git(bob.root, "checkout", "--ours", "flexforge.lock")
    commit(bob, "merge alt")
    assert plan(bob)["zz"] == "restore (in place)"
    result, paid = team.build(bob)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert_matches_manifest(bob)
    assert bob.lock()["assets"]["zz"]["seed"] == theirs["assets"]["zz"]["seed"]


def test_a_lock_deleted_on_a_fresh_clone_is_rebuilt_from_the_committed_images_free(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """A lock that cannot be read (a union merge made it invalid JSON) is deleted, as the error
    says: every seedless asset takes back the seed its committed lock pinned, its image in place
    is adopted, and no API call is made, on a clone with no .flexforge/ at all."""
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    alice.manifest(MANIFEST)
    assert team.build(alice)[1] == 4
    commit(alice, "images", push="main")
    fresh = team.clone("fresh")
    (fresh.root / "flexforge.lock").unlink()
    assert set(plan(fresh).values()) == {"restore (in place)"}, plan(fresh)
    explained = fresh.run("explain", "hero").stdout
    seed = alice.lock()["assets"]["hero"]["seed"]
    assert f"seed      {seed} (pinned by a committed lock (git history))" in explained, explained
    result, paid = team.build(fresh)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert_matches_manifest(fresh)
    seeds = {k: (v["seed"], v["sha256"]) for k, v in alice.lock()["assets"].items()}
    assert {k: (v["seed"], v["sha256"]) for k, v in fresh.lock()["assets"].items()} == seeds


def test_a_lock_a_union_merge_broke_is_rebuilt_free_once_deleted_as_the_error_says(
    tmp_path: Path, emu: RunningEmulator
) -> None:
    """`flexforge.lock merge=union` in .gitattributes leaves an invalid lock, staged and even
    committed by the merge: `git checkout` brings back no sound one, and the error says to delete
    it. Deleted, it is rebuilt from the images in place and git history, with no API call."""
    team = Team(tmp_path, emu)
    alice = team.clone("alice")
    alice.manifest(MANIFEST)
    (alice.root / ".gitattributes").write_text("flexforge.lock merge=union\n")
    assert team.build(alice)[1] == 4
    commit(alice, "images", push="main")
    # Two new assets far apart in the manifest, side by side in the sorted lock: a conflict there.
    git(alice.root, "checkout", "-qb", "side")
    alice.edit("assets:\n", 'assets:\n  zz1:\n    prompt: "one"\n')
    assert team.build(alice)[1] == 1
    commit(alice, "side")
    git(alice.root, "checkout", "-q", "main")
    alice.write("flexforge.yaml", alice.read("flexforge.yaml").decode() + '  zz2:\n    prompt: "two"\n')
    assert team.build(alice)[1] == 1
    commit(alice, "main")
    git(alice.root, "merge", "-q", "side", "-m", "merge")
    broken = alice.run("plan")
    assert broken.exit_code == 1 and "not a valid flexforge lock" in broken.stderr, broken.stderr
    assert "delete it to rebuild it from the images" in broken.stderr
    (alice.root / "flexforge.lock").unlink()
    result, paid = team.build(alice)
    assert (result.exit_code, paid) == (0, 0), result.stderr
    assert_matches_manifest(alice)
