"""Variants and a pick: N candidates with distinct pinned seeds, a free switch, more on demand."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Project

MANIFEST = """
version: 1
defaults: {width: 128, height: 128}
assets:
  hero: {prompt: "a red bicycle", variants: 3}
  post: {from: hero, size: 100x50}
  ad: {prompt: "an ad", references: [hero]}
"""


def _lock(project: Project) -> dict[str, dict[str, object]]:
    return project.lock()["assets"]  # type: ignore[no-any-return]


def test_variants_make_candidates_with_distinct_pinned_seeds(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    lock = _lock(project)
    seeds = {lock[f"hero--{k}"]["seed"] for k in (1, 2, 3)}
    assert len(seeds) == 3
    # The first is selected by default; only it is written (at `out`), the others are cached.
    assert lock["hero"]["seed"] == 1 and lock["hero"]["sha256"] == lock["hero--1"]["sha256"]
    assert _sha(project, "assets/hero.png") == lock["hero--1"]["sha256"]
    assert not (tmp_path / "variants").exists()
    for k in (1, 2, 3):
        assert _cached(project, str(lock[f"hero--{k}"]["sha256"]))


def _sha(project: Project, rel: str) -> str:
    import hashlib

    return hashlib.sha256(project.read(rel)).hexdigest()


def _cached(project: Project, sha: str) -> bool:
    return any(p.name == sha for p in (project.root / ".flexforge" / "objects").rglob("*"))


COMMITTED = "version: 1\nsettings: {variants_dir: variants}\n" + MANIFEST.split("version: 1\n", 1)[1]


def test_variants_dir_writes_every_candidate_to_commit(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(COMMITTED)
    assert project.build().exit_code == 0
    lock = _lock(project)
    assert sorted(p.name for p in (tmp_path / "variants/hero").iterdir()) == ["1.png", "2.png", "3.png"]
    for k in (1, 2, 3):
        assert lock[f"hero--{k}"]["out"] == f"variants/hero/{k}.png"
        assert _sha(project, f"variants/hero/{k}.png") == lock[f"hero--{k}"]["sha256"]
    assert project.read("assets/hero.png") == project.read("variants/hero/1.png")
    # Kept in sync like any output: a deleted candidate comes back from the cache, free.
    (tmp_path / "variants/hero/2.png").unlink()
    assert project.plan()["hero--2"] == "restore"
    assert project.build("--frozen").exit_code == 0
    assert _sha(project, "variants/hero/2.png") == lock["hero--2"]["sha256"]


def test_turning_variants_dir_on_writes_the_cached_candidates_for_free(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    before = _lock(project)
    project.manifest(COMMITTED.replace("variants_dir: variants", "variants_dir: design/candidates"))
    plan = project.plan()
    assert [plan[f"hero--{k}"] for k in (1, 2, 3)] == ["restore"] * 3 and plan["hero"] == "none"
    result = project.build("--frozen")  # would fail if anything had to be generated
    assert result.exit_code == 0, result.stderr
    after = _lock(project)
    for k in (1, 2, 3):
        assert after[f"hero--{k}"]["sha256"] == before[f"hero--{k}"]["sha256"]
        assert _sha(project, f"design/candidates/hero/{k}.png") == before[f"hero--{k}"]["sha256"]


def test_turning_variants_dir_off_leaves_the_files_to_gc(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(COMMITTED)
    assert project.build().exit_code == 0
    project.manifest(MANIFEST)
    assert set(project.plan().values()) == {"none"}
    listed = project.run("gc")
    assert listed.exit_code == 0
    for k in (1, 2, 3):
        assert f"variants/hero/{k}.png" in listed.stdout
    assert "assets/hero.png" not in listed.stdout
    assert project.run("gc", "--yes").exit_code == 0
    assert not list((tmp_path / "variants").rglob("*.png"))
    assert project.read("assets/hero.png")
    assert set(project.plan().values()) == {"none"}
    # A file at a candidate's path that flexforge never recorded there is not gc's to delete.
    (tmp_path / "variants/hero/2.png").write_bytes(b"the designer's own file")
    assert "variants/hero/2.png" not in project.run("gc").stdout


def test_a_fixed_seed_gives_consecutive_candidate_seeds(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST.replace("variants: 3", "variants: 2, seed: 40"))
    assert project.build().exit_code == 0
    assert [_lock(project)[f"hero--{k}"]["seed"] for k in (1, 2)] == [40, 41]


def test_pick_switches_for_free_and_dependents_follow(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    first = project.read("assets/hero.png")
    result = project.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert "candidate 2 of 3 selected, no API call" in result.stdout
    assert "0 generated" not in result.stderr or "restored" in result.stderr
    assert _sha(project, "assets/hero.png") == _lock(project)["hero--2"]["sha256"]
    assert project.read("assets/hero.png") != first and not (tmp_path / "variants").exists()
    assert _lock(project)["hero"]["seed"] == 2
    plan = project.plan()
    assert plan["post"] == "regenerate" and plan["ad"] == "regenerate" and plan["hero--1"] == "none"
    assert project.build().exit_code == 0
    # Back to the first pick: from the cache, and the dependents' old images with it.
    result = project.run("pick", "hero", "1", "--provider", "draft")
    assert "restored (from cache, no API call)" in result.stderr
    assert project.read("assets/hero.png") == first
    assert set(project.plan().values()) == {"none", "restore"} or set(project.plan().values()) == {"none"}


def test_pick_restores_committed_candidates_from_git_in_a_fresh_clone(tmp_path: Path) -> None:
    import subprocess

    project = Project(tmp_path / "origin")
    project.manifest(COMMITTED)
    assert project.build().exit_code == 0
    assert project.run("pick", "hero", "3", "--provider", "draft").exit_code == 0

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", cwd=project.root)
    git("add", "-A", cwd=project.root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pick 3", cwd=project.root)
    git("clone", "-q", str(project.root), str(tmp_path / "clone"), cwd=tmp_path)
    clone = Project(tmp_path / "clone")
    result = clone.run("pick", "hero", "1", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert clone.read("assets/hero.png") == clone.read("variants/hero/1.png")


def test_more_adds_candidates_without_touching_the_others(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    before = _lock(project)
    result = project.run("pick", "hero", "--more", "2", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert "variants: 3 -> 5" in result.stderr
    assert 'hero: {prompt: "a red bicycle", variants: 5}' in (tmp_path / "flexforge.yaml").read_text()
    after = _lock(project)
    for k in (1, 2, 3):
        assert after[f"hero--{k}"] == before[f"hero--{k}"]
    assert {"hero--4", "hero--5"} <= set(after)
    assert after["hero"]["sha256"] == before["hero"]["sha256"]
    assert project.plan()["ad"] == "none"


def test_bad_picks_are_clear_errors(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.manifest(MANIFEST)
    result = project.run("pick", "hero", "4", "--provider", "draft")
    assert result.exit_code == 2 and "hero has candidates 1..3" in result.stderr
    result = project.run("pick", "post", "1")
    assert result.exit_code == 2 and "post has no candidates: add `variants: N`" in result.stderr
    result = project.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 1 and "would have to be generated (paid) first" in result.stderr
    project.manifest(MANIFEST.replace("variants: 3", "variants: 3, pick: 5"))
    result = project.run("validate")
    assert result.exit_code == 1 and "flexforge.yaml:4:" in result.stderr
    assert "pick 5: there are 3 candidates (1..3)" in result.stderr


def _clone(origin: Project, dest: Path) -> Project:
    import subprocess

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", cwd=origin.root)
    git("add", "-A", cwd=origin.root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "build", cwd=origin.root)
    git("clone", "-q", str(origin.root), str(dest), cwd=origin.root)
    return Project(dest)


def test_a_fresh_clone_of_cached_candidates_is_up_to_date_and_pays_nothing(tmp_path: Path) -> None:
    project = Project(tmp_path / "origin")
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    clone = _clone(project, tmp_path / "clone")
    # No cache here, no candidate files committed: the lock stands for them.
    assert set(clone.plan().values()) == {"none"}
    assert clone.build("--frozen").exit_code == 0
    # Picking one this machine never had is a clear error, not a paid generation.
    result = clone.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "the image of hero--2 is in no cache, remote or commit this machine can read" in result.stderr
    assert "settings: variants_dir:" in result.stderr and "--replace hero--2" in result.stderr
    assert clone.lock()["assets"] == project.lock()["assets"]  # nothing was paid for, nothing moved
    assert clone.read("assets/hero.png") == project.read("assets/hero.png")
    # A missing output is restored from git without its candidates.
    (clone.root / "assets/hero.png").unlink()
    assert clone.plan()["hero"] == "restore" and clone.plan()["hero--1"] == "none"


def test_a_candidate_needed_and_held_nowhere_is_planned_as_made_again(tmp_path: Path) -> None:
    project = Project(tmp_path / "origin")
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    # Only the manifest and the lock: no outputs, no cache, no history (a lock mailed around).
    copy = Project(tmp_path / "copy")
    copy.manifest(MANIFEST)
    (copy.root / "flexforge.lock").write_bytes(project.read("flexforge.lock"))
    plan = copy.plan()
    assert plan["hero--1"] == "regenerate" and plan["hero"] == "regenerate"
    assert plan["hero--2"] == "none" and plan["hero--3"] == "none"  # not needed: not made
    rows = {a["id"]: a for a in copy.run("plan", "--json", "--provider", "draft").json()["assets"]}
    assert rows["hero--1"]["reasons"] == ["missing"]
    assert copy.build().exit_code == 0
    assert copy.read("assets/hero.png") == project.read("assets/hero.png")  # the draft is deterministic


def test_variants_dir_is_confined_like_any_output(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project = Project(tmp_path / "p")
    for folder, message in (
        ("../elsewhere", "leaves the project root"),
        (".git/hooks", "is inside .git/, which flexforge never writes"),
        (".flexforge/x", "is inside .flexforge/, which flexforge never writes"),
        ("/tmp/x", "is absolute"),
    ):
        project.manifest(COMMITTED.replace("variants_dir: variants", f"variants_dir: {folder}"))
        result = project.run("validate")
        assert result.exit_code == 1 and "Traceback" not in result.stderr, folder
        assert "flexforge.yaml:2:" in result.stderr and "settings.variants_dir" in result.stderr, folder
        assert message in result.stderr, (folder, result.stderr)
    # A folder swapped for a link out of the root after validation: nothing is written through it.
    project.manifest(COMMITTED)
    assert project.run("validate").exit_code == 0
    (project.root / "variants").symlink_to(outside)
    result = project.build()
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert not list(outside.iterdir())


def test_a_file_planted_at_a_cached_candidates_path_is_never_taken_for_it(tmp_path: Path) -> None:
    from tests.helpers import png

    project = Project(tmp_path)
    project.manifest(MANIFEST)
    assert project.build().exit_code == 0
    lock = _lock(project)
    png(tmp_path / "variants/hero/2.png", (128, 128), (1, 2, 3))  # the right size, other pixels
    assert set(project.plan().values()) == {"none"}
    result = project.run("pick", "hero", "2", "--provider", "draft")
    assert result.exit_code == 0, result.stderr
    assert _sha(project, "assets/hero.png") == lock["hero--2"]["sha256"]  # the cached one
    out = tmp_path / "site"
    assert project.run("gallery", "--provider", "draft", "--out", str(out)).exit_code == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    assert f"thumbs/{lock['hero--2']['sha256']}.webp" in html
    planted = _sha(project, "variants/hero/2.png")
    assert planted not in html and not (out / "images" / f"{planted}.png").exists()
    result = project.run("accept", "hero--2")
    assert result.exit_code == 1 and "hero--2 is a candidate kept in the cache" in result.stderr
    assert _lock(project)["hero--2"] == lock["hero--2"]
