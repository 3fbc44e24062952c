"""The diff's classification of changes, on lock entries made by hand (milliseconds each)."""

from __future__ import annotations

from flexforge.lockfile import LockEntry
from flexforge.report import Diff, Revision, State, Written, compare


def entry(
    key: str, sha: str, out: str = "assets/a.png", seed: int = 1, cost: float | None = 0.03
) -> LockEntry:
    parts = {
        "prompt": key[:4],
        "params": "p",
        "seed": str(seed),
        "model": "m",
        "references": "r",
        "upstream": "u",
    }
    return LockEntry(
        key=key * 64 if len(key) == 1 else key,
        parts=parts,
        seed=seed,
        model="flux-2-flex",
        generator="flux-2-flex",
        provider="bfl",
        out=out,
        sha256=sha * 64 if len(sha) == 1 else sha,
        size=10,
        cost_usd=cost,
    )


def diff(before: dict[str, LockEntry], after: dict[str, LockEntry], known: set[str] | None = None) -> Diff:
    base = State(Revision("b" * 40, "base"), before, {})
    head = State(Revision(None, "working tree"), after, {"x": Written("a {brand}", ["t"])})
    return compare(base, head, known or set())


def changes(d: Diff) -> dict[str, str]:
    return {row.id: row.change for row in d.assets}


def test_same_entry_is_unchanged_and_costs_nothing() -> None:
    d = diff({"x": entry("a", "1")}, {"x": entry("a", "1")})
    assert changes(d) == {"x": "unchanged"}
    assert d.summary["cost_usd"] == 0 and d.changed == []


def test_new_key_and_bytes_is_regenerated_with_its_cost_and_parts() -> None:
    d = diff({"x": entry("a", "1", seed=1)}, {"x": entry("b", "2", seed=2)})
    row = d.assets[0]
    assert row.change == "regenerated"
    assert row.changed_parts == ["prompt", "seed"]
    assert row.cost_usd == 0.03 and d.summary["cost_usd"] == 0.03


def test_key_seen_in_history_is_restored_for_free() -> None:
    d = diff({"x": entry("a", "1")}, {"x": entry("c", "3")}, known={"c" * 64})
    assert changes(d) == {"x": "restored"} and d.assets[0].cost_usd == 0


def test_same_key_other_bytes_is_an_edit() -> None:
    assert changes(diff({"x": entry("a", "1")}, {"x": entry("a", "2")})) == {"x": "edited"}


def test_moved_output_is_a_rename_of_the_path() -> None:
    d = diff({"x": entry("a", "1")}, {"x": entry("a", "1", out="img/a.png")})
    assert changes(d) == {"x": "renamed"} and d.assets[0].changed_parts == ["out"]


def test_new_id_with_a_removed_ids_key_is_a_rename() -> None:
    d = diff(
        {"old": entry("a", "1"), "gone": entry("g", "9")}, {"new": entry("a", "1"), "fresh": entry("f", "8")}
    )
    assert changes(d) == {"new": "renamed", "fresh": "added", "gone": "removed"}
    renamed = next(r for r in d.assets if r.id == "new")
    assert renamed.previous_id == "old" and renamed.cost_usd == 0


def test_rename_by_bytes_when_the_key_changed_too() -> None:
    d = diff({"old": entry("a", "1")}, {"new": entry("b", "1")})
    assert changes(d) == {"new": "renamed"}


def test_added_asset_with_a_key_from_history_is_restored() -> None:
    d = diff({}, {"x": entry("a", "1")}, known={"a" * 64})
    assert changes(d) == {"x": "restored"} and d.summary["cost_usd"] == 0


def test_rows_are_grouped_by_change_then_id_and_json_is_versioned() -> None:
    d = diff(
        {"b": entry("a", "1"), "z": entry("z", "9"), "k": entry("k", "7")},
        {"b": entry("b", "2"), "a": entry("n", "3"), "k": entry("k", "7")},
    )
    assert [r.id for r in d.assets] == ["a", "b", "z", "k"]
    doc = d.to_json()
    assert list(doc) == ["kind", "version", "base", "head", "assets", "summary"]  # docs/review-json.md
    assert doc["version"] == 1 and doc["kind"] == "diff"
    assert doc["summary"] == {
        "added": 1,
        "regenerated": 1,
        "restored": 0,
        "edited": 0,
        "renamed": 0,
        "removed": 1,
        "unchanged": 1,
        "cost_usd": 0.06,
    }
    assert set(doc["assets"][0]) == {
        "id",
        "change",
        "previous_id",
        "changed_parts",
        "distance",
        "cost_usd",
        "before",
        "after",
    }


def test_unreported_cost_counts_as_zero() -> None:
    d = diff({"x": entry("a", "1")}, {"x": entry("b", "2", cost=None)})
    assert d.summary["cost_usd"] == 0.0
