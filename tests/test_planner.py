"""planner.step_for: the one answer to "what does this asset need now", tested directly."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from flexforge.keys import content_key
from flexforge.lockfile import Lock, LockEntry
from flexforge.manifest import Asset, Manifest, load_manifest
from flexforge.options import PlanOptions
from flexforge.planner import (
    CONFLICT,
    CREATE,
    DRIFTED,
    NONE,
    REGENERATE,
    RENAME,
    RESTORE,
    Facts,
    Step,
    make_plan,
    step_for,
)
from flexforge.sources import CACHE, IN_PLACE, WORKING_TREE
from flexforge.store import KeyRecord, Store

MANIFEST = """
version: 1
defaults: {width: 64, height: 64}
assets:
  hero:
    prompt: "A poster with the headline 'Brew bold'"
  banner:
    prompt: "A banner built on image 1"
    references: [hero]
"""


def image(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


class World:
    """A project folder with a manifest, a lock and a store, all real files."""

    def __init__(self, root: Path, manifest: str = MANIFEST) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "flexforge.yaml").write_text(manifest)
        self.manifest: Manifest = load_manifest(root / "flexforge.yaml")
        self.store = Store(root / ".flexforge")
        self.lock = Lock(root / "flexforge.lock")

    def reload(self, manifest: str) -> None:
        (self.root / "flexforge.yaml").write_text(manifest)
        self.manifest = load_manifest(self.root / "flexforge.yaml")

    def built(self, asset_id: str, data: bytes, seed: int = 7, *, out: str | None = None) -> LockEntry:
        """Record `data` as the asset's output for its current request, and write the file."""
        asset = self.manifest.assets[asset_id]
        digests = [self.lock.entries[r].sha256 for r in asset.asset_refs]
        key = content_key(asset, "draft", seed, digests)
        rel = out or asset.out
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entry = LockEntry(key.key, key.parts, seed, asset.model, "draft", "draft", rel, sha, len(data))
        self.lock.entries[asset_id] = entry
        return entry

    def facts(self, **options: frozenset[str]) -> Facts:
        return Facts.gather(
            self.manifest, self.lock, Store(self.root / ".flexforge"), "draft", PlanOptions(**options)
        )

    def step(self, asset_id: str, **options: frozenset[str]) -> Step:
        facts = self.facts(**options)
        outputs = {
            r: self.lock.entries[r].sha256 for r in self.asset(asset_id).asset_refs if r in self.lock.entries
        }
        return step_for(self.asset(asset_id), facts, dict(outputs))

    def asset(self, asset_id: str) -> Asset:
        return self.manifest.assets[asset_id]

    def plan(self, **options: frozenset[str]) -> dict[str, tuple[str, str]]:
        plan = make_plan(
            self.manifest,
            self.lock,
            Store(self.root / ".flexforge"),
            "draft",
            "draft",
            PlanOptions(**options),
        )
        return {s.asset.id: (s.action, s.detail) for s in plan.steps}


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "proj")
    w.built("hero", image((1, 2, 3)))
    w.built("banner", image((4, 5, 6)))
    return w


def test_up_to_date_when_key_and_bytes_match(world: World) -> None:
    assert world.plan() == {"hero": (NONE, ""), "banner": (NONE, "")}


def test_changed_key_with_different_bytes_is_regenerate_never_drifted(world: World) -> None:
    """The merge bug: the lock says one prompt, the files another; the key decides first."""
    world.reload(MANIFEST.replace("Brew bold", "Brew bolder"))
    (world.root / "assets/hero.png").write_bytes(image((9, 9, 9)))
    plan = world.plan()
    assert plan["hero"] == (REGENERATE, "prompt")
    assert plan["banner"][0] == REGENERATE  # upstream still to be made


def test_unchanged_key_with_other_bytes_is_drifted_and_dependents_see_the_lock(world: World) -> None:
    (world.root / "assets/hero.png").write_bytes(image((9, 9, 9)))
    assert world.plan() == {"hero": (DRIFTED, ""), "banner": (NONE, "")}


def test_missing_output_restores_from_the_cache(world: World) -> None:
    data = (world.root / "assets/hero.png").read_bytes()
    world.store.put_object(data)
    key = world.lock.entries["hero"].key
    world.store.put_key_record(key, KeyRecord(hashlib.sha256(data).hexdigest(), len(data), "draft", 7))
    (world.root / "assets/hero.png").unlink()
    step = world.step("hero")
    assert step.source is not None
    assert (step.action, step.source.kind, step.detail) == (RESTORE, CACHE, "cache")


def test_missing_output_with_no_copy_anywhere_regenerates(world: World) -> None:
    (world.root / "assets/hero.png").unlink()
    assert world.plan()["hero"] == (REGENERATE, "missing")


def test_moved_output_restores_from_its_old_path_in_the_working_tree(world: World) -> None:
    world.reload(MANIFEST.replace("  hero:\n", "  hero:\n    out: img/hero.png\n"))
    step = world.step("hero")
    assert step.action == RESTORE and step.source is not None
    assert step.source.kind == WORKING_TREE and step.detail == "working tree: assets/hero.png"


def test_git_mv_of_an_output_is_in_place(world: World) -> None:
    (world.root / "assets/hero.png").rename(world.root / "assets/h.png")
    world.reload(MANIFEST.replace("  hero:\n", "  hero:\n    out: assets/h.png\n"))
    step = world.step("hero")
    assert step.source is not None
    assert (step.action, step.source.kind, step.reasons) == (RESTORE, IN_PLACE, ["moved"])


def test_reverted_request_restores_bytes_another_entry_records(world: World) -> None:
    """An asset asking what another lock entry was built for takes that entry's file."""
    twin = MANIFEST + "  twin:\n    prompt: \"A poster with the headline 'Brew bold'\"\n    seed: 7\n"
    world.reload(twin)
    step = world.step("twin")
    assert (step.action, step.detail) == (RESTORE, "working tree: assets/hero.png")


def test_renamed_seedless_asset_keeps_the_old_seed_and_image(world: World) -> None:
    world.lock.entries["hero"].seed = 12345
    asset = world.asset("hero")
    key = content_key(asset, "draft", 12345, [])
    world.lock.entries["hero"].key = key.key
    world.reload(MANIFEST.replace("  hero:", "  masthead:").replace("[hero]", "[masthead]"))
    step = world.step("masthead")
    assert (step.action, step.detail, step.seed) == (RENAME, "from hero", 12345)
    assert step.source is not None and step.source.path == "assets/hero.png"


def test_unknown_file_at_a_new_assets_path_is_a_conflict_unless_replaced(world: World) -> None:
    world.reload(MANIFEST + "  logo:\n    prompt: a logo\n")
    (world.root / "assets/logo.png").write_bytes(image((0, 0, 0)))
    assert world.plan()["logo"] == (CONFLICT, "")
    assert world.plan(replace=frozenset({"logo"}))["logo"] == (REGENERATE, "replace")
    (world.root / "assets/logo.png").unlink()
    assert world.plan()["logo"] == (CREATE, "")


def test_file_with_known_bytes_at_a_new_assets_path_is_adopted_in_place(world: World) -> None:
    world.reload(MANIFEST + "  copy:\n    prompt: \"A poster with the headline 'Brew bold'\"\n    seed: 7\n")
    (world.root / "assets/copy.png").write_bytes((world.root / "assets/hero.png").read_bytes())
    step = world.step("copy")
    assert (step.action, step.detail) == (RESTORE, "in place")


def test_generator_change_is_named(world: World) -> None:
    facts = Facts.gather(world.manifest, world.lock, world.store, "flux", PlanOptions())
    step = step_for(world.asset("hero"), facts, {})
    assert step.reasons == ["generator: draft -> flux"]


def test_step_for_with_a_drawn_seed_computes_the_key(world: World) -> None:
    world.reload(MANIFEST + "  logo:\n    prompt: a logo\n")
    facts = world.facts()
    assert step_for(world.asset("logo"), facts, {}).key is None
    step = step_for(world.asset("logo"), facts, {}, seed=99)
    assert step.key is not None and step.seed == 99 and step.action == CREATE


def test_reseed_outside_the_selection_is_an_error(world: World) -> None:
    from flexforge.errors import UsageError

    with pytest.raises(UsageError, match="not among the assets this build selects"):
        world.plan(targets=frozenset({"hero"}), reseed=frozenset({"banner"}))
    with pytest.raises(UsageError, match="unknown asset id nope: not in"):
        world.plan(targets=frozenset({"nope"}))
