"""flexforge.lock: deterministic bytes, strict reading, and the history parser's contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexforge.errors import FlexforgeError
from flexforge.lockfile import Lock, LockEntry, parse_entries, read_lock

SHA = "a" * 64


def entry(**changes: object) -> LockEntry:
    fields: dict[str, object] = {
        "key": "b" * 64,
        "parts": {"prompt": "x"},
        "seed": 1,
        "model": "flux-2-flex",
        "generator": "flux",
        "provider": "bfl",
        "out": "assets/hero.png",
        "sha256": SHA,
        "size": 10,
    }
    fields.update(changes)
    return LockEntry(**fields)  # type: ignore[arg-type]


def test_render_is_sorted_with_a_trailing_newline_and_round_trips(tmp_path: Path) -> None:
    lock = Lock(tmp_path / "flexforge.lock", {"z": entry(), "a": entry(seed=2)})
    assert lock.save() is True
    raw = (tmp_path / "flexforge.lock").read_bytes()
    assert raw.endswith(b"}\n") and list(json.loads(raw)["assets"]) == ["a", "z"]
    again = read_lock(tmp_path / "flexforge.lock")
    assert again.entries == lock.entries
    assert again.save() is False  # a no-op leaves the file untouched


def test_missing_lock_is_empty(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "none.lock").entries == {}


def test_conflict_markers_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "flexforge.lock").write_text("<<<<<<< HEAD\n")
    with pytest.raises(FlexforgeError, match="git checkout --theirs"):
        read_lock(tmp_path / "flexforge.lock")


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"version": 2, "assets": {}}',
        b'{"version": 1, "assets": {"a": {"key": "zz"}}}',
        b'{"version": 1, "assets": []}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_parse_entries_turns_any_malformation_into_value_error(raw: bytes) -> None:
    """Old locks from git history are untrusted: one broken commit must not stop a plan."""
    with pytest.raises(ValueError):
        parse_entries(raw)


def test_bad_seed_or_size_is_refused(tmp_path: Path) -> None:
    lock = Lock(tmp_path / "x.lock", {"a": entry(seed=-1)})
    with pytest.raises(ValueError, match=r"assets\.a\.seed -1 is not from 0"):
        parse_entries(lock.render())


def test_render_is_exactly_indented_sorted_json_however_entries_change(tmp_path: Path) -> None:
    """Stanzas are encoded once and kept; the bytes must stay json.dumps(indent=2, sort_keys)."""
    lock = Lock(tmp_path / "flexforge.lock")

    def expected() -> bytes:
        doc = {
            "_generated": json.loads(lock.render())["_generated"],
            "version": 1,
            "assets": {
                k: {
                    f: getattr(e, f)
                    for f in e.__dataclass_fields__
                    if f != "git_blobs" or e.git_blobs is not None  # absent, not null, when unknown
                }
                for k, e in lock.entries.items()
            },
        }
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    assert lock.render() == expected()
    lock.entries["b"] = entry()
    lock.entries["é-ü"] = entry(out="assets/ü.png", cost_usd=0.03, task_id="t")
    assert lock.render() == expected()
    lock.entries["b"] = entry(seed=9, parts={"prompt": "y", "seed": "9"})
    lock.entries["a"] = entry(size=0)
    assert lock.render() == expected()
    lock.entries["a"] = entry(git_blobs={"1" * 40: "2" * 64})
    assert lock.render() == expected()
    parsed = parse_entries(Lock(tmp_path / "x.lock", {"a": lock.entries["a"]}).render())
    assert parsed["a"].git_blobs == {"1" * 40: "2" * 64}
    del lock.entries["é-ü"]
    assert lock.render() == expected()


def test_set_entry_drop_and_put_back_undo_each_other(tmp_path: Path) -> None:
    lock = Lock(tmp_path / "flexforge.lock", {"a": entry()})
    old = lock.set_entry("a", entry(seed=2))
    assert old == entry() and lock.entries["a"].seed == 2
    assert lock.set_entry("b", entry()) is None
    lock.put_back("a", old)
    lock.put_back("b", None)  # b had no entry before: it has none again
    assert lock.entries == {"a": entry()}
    assert lock.drop("a") == entry() and lock.drop("a") is None and lock.entries == {}


def test_stanzas_are_rendered_byte_for_byte_as_json_indents_them() -> None:
    import json
    import random

    from flexforge.lockfile import indented

    rng = random.Random(7)

    def value(depth: int) -> object:
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.randrange(-(2**40), 2**40)
        if kind == 3:
            return rng.choice([0.0, 0.1, 1e-7, 3.0e21, -2.5, 0.30000000000000004])
        if kind in (4, 5):
            return "".join(rng.choice('ab"\\\n\té€😀\x00/') for _ in range(rng.randrange(6)))
        if kind in (6, 7):
            return {f"k{rng.randrange(20)}é": value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(500):
        doc = {f"f{i}": value(0) for i in range(rng.randrange(6))}
        expected = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        assert indented(doc) == expected
    with pytest.raises(ValueError):
        indented({"cost_usd": float("nan")})


@pytest.mark.parametrize(
    "blobs",
    [
        ["1" * 40],
        {"not-a-blob-id": "2" * 64},
        {"1" * 40: "short"},
        {"1" * 40: 7},
        {f"{i:040x}": "2" * 64 for i in range(65)},
        {"1" * 40 + "\n": "2" * 64},
        {"1" * 40: "2" * 64 + "\n"},
    ],
    ids=["a list", "bad blob id", "bad digest", "a number", "65 pairs", "newline id", "newline digest"],
)
def test_git_blobs_of_any_other_shape_are_refused_with_one_message(tmp_path: Path, blobs: object) -> None:
    """A committed lock's git_blobs decide which digests a fresh clone does not hash: only
    blob id -> sha256 pairs, a few per entry, are taken."""
    lock = Lock(tmp_path / "x.lock", {"a": entry()})
    doc = json.loads(lock.render())
    doc["assets"]["a"]["git_blobs"] = blobs
    with pytest.raises(ValueError, match=r"assets\.a\.git_blobs must map git blob ids to sha256 digests"):
        parse_entries(json.dumps(doc).encode())
