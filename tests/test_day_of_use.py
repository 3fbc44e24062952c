"""What a day of use turned up: conflicts and accept, LFS pointers, gc, cost, status, pipes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Project, png

MANIFEST = """
version: 1
settings: {provider: draft}
defaults: {width: 128, height: 128}
assets:
  hero: {prompt: "A poster with the headline 'Brew bold'"}
  card: {prompt: "A card from image 1", references: [hero]}
"""


def built(project: Project) -> Project:
    project.manifest(MANIFEST)
    result = project.build()
    assert result.exit_code == 0, result.stderr
    return project


def test_agency_file_at_a_new_path_is_a_conflict_left_alone_then_accepted(project: Project) -> None:
    built(project)
    agency = png(project.root / "assets/partner.png", size=(128, 128), color=(9, 99, 199))
    data = agency.read_bytes()
    project.edit("assets:\n", "assets:\n  partner: {prompt: a partner logo}\n")
    assert project.plan()["partner"] == "conflict"
    result = project.build()
    assert result.exit_code == 0 and "1 conflict" in result.stderr
    assert "flexforge accept partner" in result.stderr
    assert agency.read_bytes() == data
    frozen = project.run("build", "--frozen")
    assert frozen.exit_code == 1 and "flexforge accept partner" in frozen.stderr
    accepted = project.run("accept", "partner")
    assert accepted.exit_code == 0, accepted.stderr
    assert project.lock()["assets"]["partner"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert project.plan()["partner"] == "none"


def test_replace_overwrites_a_conflicting_file(project: Project) -> None:
    built(project)
    png(project.root / "assets/partner.png", size=(128, 128), color=(9, 99, 199))
    project.edit("assets:\n", "assets:\n  partner: {prompt: a partner logo}\n")
    result = project.build("--replace", "partner")
    assert "1 generated" in result.stderr
    assert project.plan()["partner"] == "none"


def test_accept_refuses_an_lfs_pointer_and_a_wrong_size(project: Project) -> None:
    built(project)
    out = project.root / "assets/hero.png"
    out.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 12345\n")
    result = project.run("accept", "hero")
    assert result.exit_code == 1 and "git lfs pull" in result.stderr
    png(out, size=(64, 64))
    result = project.run("accept", "hero")
    assert result.exit_code == 1 and "64x64" in result.stderr and "width" in result.stderr


def test_unknown_id_is_one_message_and_exit_2_everywhere(project: Project) -> None:
    built(project)
    for args in (["accept", "nope"], ["explain", "nope"], ["build", "nope"], ["plan", "nope"]):
        result = project.run(*args)
        assert result.exit_code == 2, args
        assert "unknown asset id nope: not in flexforge.yaml" in result.stderr, args


def test_explain_marks_only_the_parts_that_changed_and_shows_drift(project: Project) -> None:
    built(project)
    project.edit("Brew bold", "Brew bolder")
    text = project.run("explain", "card").stdout
    marked = [line.split()[1] for line in text.splitlines() if line.strip().startswith(("*", "?"))]
    assert marked == ["upstream"]  # the card's own request is unchanged; its input is to be built
    assert "to be built first" in text
    project.edit("Brew bolder", "Brew bold")
    png(project.root / "assets/hero.png", size=(128, 128), color=(1, 1, 1))
    text = project.run("explain", "hero").stdout
    assert "hero: drifted" in text and "on disk   sha256" in text and "lock      sha256" in text


def test_explain_of_a_drifted_asset_shows_the_digest_on_disk_against_the_locks(project: Project) -> None:
    built(project)
    edited = png(project.root / "assets/hero.png", size=(128, 128), color=(1, 1, 1))
    text = project.run("explain", "hero").stdout
    on_disk = hashlib.sha256(edited.read_bytes()).hexdigest()
    assert f"on disk   sha256 {on_disk}" in text
    assert f"lock      sha256 {project.lock()['assets']['hero']['sha256']}" in text


def test_gc_lists_then_deletes_orphaned_outputs_and_unneeded_objects(project: Project) -> None:
    from flexforge.commands.gc import find
    from flexforge.context import GlobalOptions, open_project

    built(project)
    git = ["git", "-C", str(project.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    project.edit("  card:", "  postcard:")
    assert "1 restored" in project.build().stderr  # the rename, free
    project.edit("Brew bold", "Brew bolder")
    project.build()
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "two"], check=True)
    png(project.root / "assets/mine.png")  # a file flexforge never made: never collected
    listing = project.run("gc")
    assert listing.exit_code == 0, listing.stderr
    assert "orphaned output  assets/card.png" in listing.stdout
    assert "mine.png" not in listing.stdout and "would delete: 1 orphaned output" in listing.stdout
    old = open_project(GlobalOptions(directory=project.root))
    stale = find(old, recent_days=0).objects  # nothing counts as recent: the old hero and card
    assert len(stale) == 2
    deleted = project.run("gc", "--yes")
    assert deleted.exit_code == 0, deleted.stderr
    assert not (project.root / "assets/card.png").exists()
    assert (project.root / "assets/mine.png").exists() and (project.root / "assets/postcard.png").exists()
    assert project.run("gc").stdout.startswith("Nothing to collect")


def test_status_shows_everything_spent_and_cost_groups_it(project: Project) -> None:
    built(project)
    status = project.run("status")
    assert "$0.00 spent in total" in status.stdout and "2 assets up to date" in status.stdout
    cost = project.run("cost", "--by", "asset")
    assert cost.exit_code == 0 and "0 paid images, $0.00 in total" in cost.stdout
    doc = project.run("cost", "--json").json()
    assert set(doc) >= {"total_usd", "by_run", "by_asset", "by_model", "by_month"}


def test_status_into_a_closed_pipe_exits_quietly(project: Project) -> None:
    built(project)
    for i in range(300):
        project.edit("assets:\n", f"assets:\n  x{i}: {{prompt: p{i}}}\n")
    reader = subprocess.Popen(
        f"{sys.executable} -m flexforge -C {project.root} status | head -1",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = reader.communicate(timeout=120)
    assert out.count(b"\n") == 1
    assert b"Traceback" not in err and b"internal error" not in err and b"BrokenPipe" not in err


def test_reseed_outside_targets_is_an_error(project: Project) -> None:
    built(project)
    result = project.run("build", "hero", "--reseed", "card")
    assert result.exit_code == 2 and "not among the assets this build selects" in result.stderr


def test_lfs_pointer_output_is_reported_by_plan(project: Project) -> None:
    built(project)
    Path(project.root / "assets/hero.png").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "b" * 64 + "\nsize 1\n"
    )
    result = project.run("plan")
    assert "Git LFS pointer" in result.stdout and "git lfs pull" in result.stdout


def test_lfs_pointers_are_never_called_edited_by_hand_by_build_or_frozen(project: Project) -> None:
    """A clone made without `git lfs`: build and `--frozen` say what plan says (a Git LFS pointer:
    run `git lfs pull`), never "edited by hand", and the hint is not `accept`, which refuses it."""
    built(project)
    for name in ("hero", "card"):
        Path(project.root / f"assets/{name}.png").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:" + "b" * 64 + "\nsize 1\n"
        )
    result = project.build()
    assert result.exit_code == 0, result.stderr
    assert "edited by hand" not in result.stderr and "git lfs pull" in result.stderr
    result = project.build("--frozen")
    assert result.exit_code == 1
    hint = result.stderr.rsplit(").", 1)[-1]
    assert "git lfs pull" in hint and "accept" not in hint, result.stderr


def test_unreachable_emulator_is_named_with_its_url_and_a_hint(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FLEXFORGE_EMULATOR_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FLEXFORGE_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("FLEXFORGE_RETRY_MAX_DELAY", "0.02")
    project.manifest(MANIFEST.replace("provider: draft", "provider: emulator"))
    result = project.run("build")
    assert result.exit_code == 1
    assert f"cannot connect to the emulator at http://127.0.0.1:{port}" in result.stderr
    assert "`flexforge emulator` is running" in result.stderr and "Traceback" not in result.stderr
    # Nothing reached it, so nothing can have been charged: no warning says otherwise.
    assert "may have created and charged" not in result.stderr, result.stderr


def test_a_git_source_that_fails_its_check_falls_back_to_generating(project: Project) -> None:
    """The plan promised a free restore; the commit's file turned out not to be the bytes. The
    build loads the provider it did not expect to need and generates that asset."""
    built(project)
    git = ["git", "-C", str(project.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    hero = project.root / "assets/hero.png"
    good = hero.read_bytes()
    # The commit holds other bytes than its lock says, of the same size (a file of another size
    # is not indexed as a source at all, so the plan would not promise it).
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    hero.write_bytes(bytes(damaged))
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "lock and file disagree"], check=True)
    hero.unlink()
    (project.root / "assets/card.png").unlink()
    subprocess.run(["rm", "-rf", str(project.root / ".flexforge")], check=True)
    plan = project.run("plan", "--json").json()["assets"]
    assert plan[0]["action"] == "restore" and plan[0]["source"].startswith("git ")
    result = project.build()
    assert result.exit_code == 0, result.stderr
    assert "damaged or gone; generating it again" in result.stderr and "1 generated" in result.stderr
    assert hero.read_bytes() == good  # the draft renderer is deterministic


def test_a_link_at_an_old_output_path_is_never_read_through(project: Project, tmp_path: Path) -> None:
    """A committed link where the lock records an old output: the working-tree source is not
    followed, even when what it points at has the recorded bytes."""
    built(project)
    hero = project.root / "assets/hero.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes(hero.read_bytes())
    hero.unlink()
    hero.symlink_to(outside)
    project.edit("'Brew bold'\"}", "'Brew bold'\", out: img/hero.png}")
    assert "working tree" not in project.run("plan").stdout
    project.build()
    made = project.root / "img/hero.png"
    assert made.is_file() and not made.is_symlink()
    assert made.read_bytes() == outside.read_bytes()  # generated again (deterministic draft)


def test_a_linked_folder_on_an_old_output_path_is_never_read_through(
    project: Project, tmp_path: Path
) -> None:
    """A committed link to a folder outside the project, on the way to a path the lock records
    (an orphaned entry naming `linked/hero.png`): that file is never hashed nor read, even
    when it holds the recorded bytes; the asset is generated, and the plan says nothing of it."""
    built(project)
    outside = tmp_path / "outside"
    outside.mkdir()
    hero = project.root / "assets/hero.png"
    (outside / "hero.png").write_bytes(hero.read_bytes())
    (project.root / "linked").symlink_to(outside)
    lock = project.lock()
    lock["assets"]["old"] = {**lock["assets"]["hero"], "out": "linked/hero.png"}
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    hero.unlink()
    planned = project.run("plan").stdout
    assert "linked/" not in planned and "hero  restore (cache)" in planned, planned
    result = project.build()
    assert result.exit_code == 0 and "linked/" not in result.stderr, result.stderr


def test_status_columns_line_up_with_short_ids_and_long_orphans(project: Project) -> None:
    project.manifest("""
        version: 1
        settings: {provider: draft}
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: one}
          a-much-longer-old-name: {prompt: two}
    """)
    assert project.build().exit_code == 0
    project.edit("  a-much-longer-old-name: {prompt: two}\n", "")
    lines = project.run("status").stdout.splitlines()
    header, row, orphan = lines[0], lines[1], lines[2]
    assert row.index("ok") == header.index("STATE")
    assert orphan.index("orphaned") == header.index("STATE")


def test_gc_never_deletes_through_a_link_out_of_the_project(project: Project, tmp_path: Path) -> None:
    """An orphaned lock entry naming `linked/keep.png`, where `linked` is a committed link to a
    folder outside the project holding a file with the recorded bytes: not an orphaned output
    of this project; `gc --yes` leaves it."""
    built(project)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    keep = outside / "keep.png"
    keep.write_bytes(project.read("assets/hero.png"))
    (project.root / "linked").symlink_to(outside)
    lock = project.lock()
    lock["assets"]["old"] = {**lock["assets"]["hero"], "out": "linked/keep.png"}
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    assert "linked/keep.png" not in project.run("gc").stdout
    assert project.run("gc", "--yes").exit_code == 0
    assert keep.exists()


def test_explain_of_a_conflict_shows_the_file_found_and_why_the_key_is_unknown(project: Project) -> None:
    built(project)
    agency = png(project.root / "assets/partner.png", size=(128, 128), color=(9, 99, 199))
    project.edit("assets:\n", "assets:\n  partner: {prompt: a partner logo}\n")
    text = project.run("explain", "partner").stdout
    assert text.startswith("partner: conflict")
    assert f"on disk   sha256 {hashlib.sha256(agency.read_bytes()).hexdigest()}" in text
    assert "unknown until a seed is drawn" in text and "inputs are built" not in text, text


def test_renaming_two_assets_of_one_request_keeps_each_its_own_seed_and_image(project: Project) -> None:
    """Two seedless assets asking the same thing differ by their drawn seeds; renamed together,
    each new id takes one old entry's seed and image, never both the same one."""
    project.manifest("""
        version: 1
        settings: {provider: draft}
        defaults: {width: 64, height: 64}
        assets:
          hero-1: {prompt: "a poster"}
          hero-2: {prompt: "a poster"}
    """)
    assert project.build().exit_code == 0
    before = {i: project.read(f"assets/hero-{i}.png") for i in (1, 2)}
    seeds = {i: project.lock()["assets"][f"hero-{i}"]["seed"] for i in (1, 2)}
    assert before[1] != before[2]
    project.write("flexforge.yaml", project.read("flexforge.yaml").decode().replace("hero-", "banner-"))
    assert project.plan() == {"banner-1": "rename", "banner-2": "rename"}
    explained = project.run("explain", "banner-2").stdout  # alone, it takes the same one
    assert explained.startswith("banner-2: rename (from hero-2)"), explained
    assert f"seed      {seeds[2]} (kept from hero-2, renamed)" in explained, explained
    assert project.build().exit_code == 0
    after = {i: project.read(f"assets/banner-{i}.png") for i in (1, 2)}
    assert after == before
    assert {i: project.lock()["assets"][f"banner-{i}"]["seed"] for i in (1, 2)} == seeds


def test_gc_never_collects_an_output_another_manifest_beside_it_writes(project: Project) -> None:
    """A manifest split in two: `b` moved to ads.yaml keeps its file, which flexforge.yaml's
    history recorded as its own output. It is ads.yaml's output now, not an orphan."""
    built(project)
    git = ["git", "-C", str(project.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    text = project.read("flexforge.yaml").decode()
    card = '  card: {prompt: "A card from image 1", references: [hero]}\n'
    project.write("flexforge.yaml", text.replace(card, ""))
    project.write(
        "ads.yaml",
        "version: 1\nsettings: {provider: draft}\ndefaults: {width: 128, height: 128}\n"
        "assets:\n  card: {prompt: a card}\n",
    )
    assert project.build().exit_code == 0
    assert project.run("-f", "ads.yaml", "accept", "card").exit_code == 0
    assert "assets/card.png" not in project.run("gc").stdout
    project.run("gc", "--yes")
    assert (project.root / "assets/card.png").exists()


def test_frozen_on_a_lost_output_points_at_build_not_at_a_git_checkout_that_cannot_work(
    project: Project,
) -> None:
    """An output that no cache, commit or remote holds (a folder without git here): a committed
    one would have been restored by the build itself, so `git checkout -- PATH` is no fix."""
    project.manifest(MANIFEST.replace('  card: {prompt: "A card from image 1", references: [hero]}\n', ""))
    assert project.build().exit_code == 0
    shutil.rmtree(project.root / "assets")
    shutil.rmtree(project.root / ".flexforge")
    result = project.build("--frozen")
    assert result.exit_code == 1
    assert "git checkout" not in result.stderr and "flexforge build" in result.stderr, result.stderr


def test_moving_an_output_onto_a_file_flexforge_never_wrote_is_a_conflict_not_a_hand_edit(
    project: Project,
) -> None:
    """`out:` moved to where a designer's export already sits: flexforge never wrote that file,
    so it is a `conflict` (left alone, accept or --replace), never "edited by hand"."""
    built(project)
    export = png(project.root / "site/hero.png", size=(128, 128), color=(5, 5, 5))
    data = export.read_bytes()
    project.edit("'Brew bold'\"}", "'Brew bold'\", out: site/hero.png}")
    assert project.plan()["hero"] == "conflict"
    result = project.build()
    assert "edited by hand" not in result.stderr and "conflict" in result.stderr, result.stderr
    assert export.read_bytes() == data


def test_renaming_a_variants_asset_keeps_every_candidate(project: Project) -> None:
    """A `variants:` asset's candidates ask one request with distinct drawn seeds: renamed, each
    new candidate takes its own old one's seed and image (before, all took the first's)."""
    project.manifest("""
        version: 1
        settings: {provider: draft}
        defaults: {width: 64, height: 64}
        assets:
          hero: {prompt: "a poster", variants: 3}
    """)
    assert project.build().exit_code == 0
    before = {k: (v["seed"], v["sha256"]) for k, v in project.lock()["assets"].items()}
    project.edit("  hero:", "  masthead:")
    planned = project.run("plan", "--json").json()["assets"]
    assert {a["id"]: a["reasons"] for a in planned if a["id"] != "masthead"} == {
        f"masthead--{k}": [f"from hero--{k}"] for k in (1, 2, 3)
    }
    assert project.build().exit_code == 0
    after = {
        k.replace("masthead", "hero"): (v["seed"], v["sha256"]) for k, v in project.lock()["assets"].items()
    }
    assert after == before


def test_gc_deletes_only_images_whatever_an_old_lock_claims(project: Project) -> None:
    """A committed lock version naming the manifest and README.md as outputs, with their bytes'
    sha256 (a hostile history can claim anything): `gc --yes` deletes neither, since flexforge
    writes only images."""
    built(project)
    (project.root / "README.md").write_text("# my project\n")
    lock = project.lock()
    for name in ("flexforge.yaml", "README.md"):
        data = project.read(name)
        lock["assets"][f"x-{name[:2].lower()}"] = {
            **lock["assets"]["hero"],
            "out": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    git = ["git", "-C", str(project.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "sneaky"], check=True)
    assert project.build().exit_code == 0  # drops the orphaned entries from the lock
    listing = project.run("gc").stdout
    assert "README.md" not in listing and "flexforge.yaml" not in listing, listing
    project.run("gc", "--yes")
    assert (project.root / "README.md").exists() and (project.root / "flexforge.yaml").exists()


@pytest.mark.parametrize("spelling", ["assets//hero.png", "assets/./hero.png", "./assets/hero.png"])
def test_gc_never_collects_an_output_in_use_under_another_spelling(project: Project, spelling: str) -> None:
    """A lock entry (a committed, maybe hostile lock) naming an output in use under another
    spelling of its path, with its bytes: the same file, in use, never collected."""
    built(project)
    lock = project.lock()
    lock["assets"]["old"] = {**lock["assets"]["hero"], "out": spelling}
    (project.root / "flexforge.lock").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    assert spelling not in project.run("gc").stdout
    assert project.run("gc", "--yes").exit_code == 0
    assert (project.root / "assets/hero.png").exists()


def small(project: Project, assets: str) -> None:
    """A built draft project of 64x64 images with these `assets:` lines."""
    head = "version: 1\nsettings: {provider: draft}\ndefaults: {width: 64, height: 64}\nassets:\n"
    project.write("flexforge.yaml", head + assets)
    assert project.build().exit_code == 0


def test_building_one_renamed_asset_keeps_the_other_renames_seed_and_image(project: Project) -> None:
    """Two assets renamed, one built alone (`build tile`): the other old entry is not dropped
    with it, so `banner` still takes `hero`'s seed and image, free, instead of a new draw."""
    small(project, '  hero: {prompt: "a poster"}\n  card: {prompt: "a card"}\n')
    hero = project.read("assets/hero.png")
    seed = project.lock()["assets"]["hero"]["seed"]
    text = project.read("flexforge.yaml").decode()
    project.write("flexforge.yaml", text.replace("hero:", "banner:").replace("card:", "tile:"))
    assert project.plan() == {"banner": "rename", "tile": "rename"}
    assert project.build("tile").exit_code == 0
    assert project.plan() == {"banner": "rename", "tile": "none"}
    assert project.build().exit_code == 0
    assert project.read("assets/banner.png") == hero
    assert project.lock()["assets"]["banner"]["seed"] == seed
    assert set(project.lock()["assets"]) == {"banner", "tile"}


def test_a_rename_left_as_a_conflict_keeps_its_old_entry_until_it_is_built(project: Project) -> None:
    """`hero` renamed `banner`, where an agency's file already lies: the build leaves the
    conflict, and keeps `hero`'s entry, so once the file is moved away the rename is free and
    keeps its seed (the entry dropped at the start of the build made it a new, paid draw)."""
    small(project, '  hero: {prompt: "a poster"}\n')
    hero, seed = project.read("assets/hero.png"), project.lock()["assets"]["hero"]["seed"]
    agency = png(project.root / "assets/banner.png", size=(64, 64), color=(9, 99, 199))
    project.write("flexforge.yaml", project.read("flexforge.yaml").decode().replace("hero:", "banner:"))
    assert project.plan() == {"banner": "conflict"}
    held = project.build()
    assert "hero" in project.lock()["assets"]
    assert "dropped from the lock" not in held.stderr, held.stderr  # the summary says what it did
    agency.rename(project.root / "agency.png")
    assert project.plan() == {"banner": "rename"}
    renamed = project.build()
    assert renamed.exit_code == 0
    assert "1 orphaned entry dropped from the lock" in renamed.stderr, renamed.stderr
    assert project.read("assets/banner.png") == hero
    assert project.lock()["assets"]["banner"]["seed"] == seed


def test_renames_whose_names_tell_nothing_pair_the_same_whatever_is_built_first(project: Project) -> None:
    """`hero-a` and `hero-b` (one request, two drawn seeds) renamed `left` and `right`: nothing in
    the names pairs them, so the new ids take the old entries in id order, and `explain right`
    and `build right` say and do what the whole plan said, not take `hero-a`'s image."""
    small(project, '  hero-a: {prompt: "a poster"}\n  hero-b: {prompt: "a poster"}\n')
    images = {i: project.read(f"assets/hero-{i}.png") for i in "ab"}
    text = project.read("flexforge.yaml").decode()
    project.write("flexforge.yaml", text.replace("hero-a:", "left:").replace("hero-b:", "right:"))
    planned = project.run("plan").stdout
    assert "rename (from hero-a)" in planned.split("left")[1].split("\n")[0], planned
    assert project.run("explain", "right").stdout.startswith("right: rename (from hero-b)")
    assert project.build("right").exit_code == 0
    assert project.build().exit_code == 0
    assert (project.read("assets/left.png"), project.read("assets/right.png")) == (images["a"], images["b"])
