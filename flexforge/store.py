"""flexforge's local state: objects, key records, seeds, journal and ledger in `.flexforge/`, and
the stat cache in the user's cache folder.

Everything here is a cache or a record that can be rebuilt or lost without losing an image the
lock points at, except the journal, which is what keeps a paid task from being paid twice.

`.flexforge/` lives inside an untrusted repository (docs/security.md): no link is followed in it,
every record is sealed on this machine (`flexforge.records`) and checked field by field before
use, every object is checked against its digest, and every read is bounded.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from flexforge.errors import FlexforgeError
from flexforge.fsutil import (
    FileTooLarge,
    NotRegularFile,
    atomic_write,
    open_regular,
    probe_writable,
    read_regular,
    real_folders,
    sha256_bytes,
    staging,
)
from flexforge.noop import file_stamp, racy
from flexforge.paths import STATE_DIR, project_cache_dir
from flexforge.records import RecordError, seal, unseal

GITIGNORE = "# Local state of flexforge: caches and in-flight task records. Never commit.\n*\n"
STAT_CACHE = "stat-cache.json"
WRITING = "writing.json"  # outputs a build is writing in place (flexforge/outputs.py)
SET_ASIDE = "set-aside"
RECORD_LIMIT = 64 * 1024  # a record is a few hundred bytes
STATE_FILE_LIMIT = 256 * 1024 * 1024  # seeds, ledger, stat cache of a 100,000-asset project fit well
HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
ASSET_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}\Z")
# What the BFL API and CometAPI hand out as task ids (UUIDs, hex); nothing a shell would expand.
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
MAX_URL = 2048

R = TypeVar("R")
Warn = Callable[[str], None]


def _stderr(message: str) -> None:
    sys.stderr.write(f"flexforge: warning: {message}\n")


# -- typed records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Which object a content key produced, and what it cost: the object cache's index."""

    sha256: str
    size: int
    provider: str
    seed: int
    task_id: str | None = None
    cost_usd: float | None = None
    result_prompt: str | None = None  # the prompt the API says it used, when it says

    def check(self) -> None:
        _require(HEX64.match(self.sha256) is not None, "sha256 is not 64 hex digits")
        _require(self.size >= 0 and 0 <= self.seed < 2**63, "size or seed out of range")
        _check_common(self.provider, self.task_id, self.cost_usd)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A paid task submitted by this or an earlier run, recorded before it was waited on."""

    asset: str
    key: str
    provider: str
    task_id: str
    polling_url: str
    submitted_at: float
    cost_credits: float | None = None  # as the submit response said, for a resumed task's ledger

    def check(self) -> None:
        _require(ASSET_ID.match(self.asset) is not None, "asset is not an asset id")
        _require(HEX64.match(self.key) is not None, "key is not 64 hex digits")
        _check_common(self.provider, self.task_id, self.cost_credits)
        url = self.polling_url
        _require(
            url.startswith(("https://", "http://"))
            and len(url) <= MAX_URL
            and url.isprintable()
            and " " not in url,
            "polling_url is not an http(s) URL",
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One paid image, as the API billed it: what `status` and cost reports add up."""

    time: float
    asset: str
    key: str
    provider: str
    task_id: str
    cost_usd: float
    cost_credits: float | None = None
    model: str | None = None  # for `flexforge cost --by model`; absent in older lines
    run: str | None = None  # the build that paid it, for `flexforge cost --by run`
    cost_source: str | None = None  # "reported" by the API, or flexforge's "estimate"

    def check(self) -> None:
        _require(ASSET_ID.match(self.asset) is not None, "asset is not an asset id")
        _require(HEX64.match(self.key) is not None, "key is not 64 hex digits")
        _check_common(self.provider, self.task_id, self.cost_usd)
        _check_common(self.provider, None, self.cost_credits)
        _require(self.cost_source in (None, "reported", "estimate"), "cost_source is not known")


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise RecordError(problem)


def _check_common(provider: str, task_id: str | None, cost: float | None) -> None:
    _require(PROVIDER_NAME.match(provider) is not None, "provider is not a provider name")
    _require(task_id is None or TASK_ID.match(task_id) is not None, "task_id has characters no API uses")
    _require(cost is None or (math.isfinite(cost) and cost >= 0), "cost is not a finite amount >= 0")


@cache
def _hints(cls: type) -> dict[str, tuple[type, ...]]:
    return {name: get_args(hint) or (hint,) for name, hint in get_type_hints(cls).items()}


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if value is None or isinstance(value, bool):
        return type(value) in allowed
    if isinstance(value, int) and float in allowed:
        return True
    if isinstance(value, float):
        return float in allowed and math.isfinite(value)
    return any(isinstance(value, t) for t in allowed if t is not type(None))


def typed(cls: type[R], body: Any) -> R:
    """A record of `cls` from decoded JSON, every field's type and range checked."""
    if not isinstance(body, dict):
        raise RecordError("is not an object")
    hints = _hints(cls)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in body:
            _require(f.default is not MISSING, f"lacks {f.name}")
            continue
        value = body[f.name]
        _require(_fits(value, hints[f.name]), f"{f.name} has the wrong type")
        values[f.name] = float(value) if float in hints[f.name] and isinstance(value, int) else value
    record = cls(**values)
    record.check()  # type: ignore[attr-defined]
    return record


# -- the store ---------------------------------------------------------------------------------


class Store:
    def __init__(self, state_dir: Path, *, cache_dir: Path | None = None, warn: Warn = _stderr) -> None:
        self.dir = state_dir
        self.root = state_dir.parent
        self.cache_dir = cache_dir or Path(project_cache_dir(self.root))
        self._warn = warn
        self._warned: set[str] = set()
        self._stats: dict[str, list[Any]] | None = None
        self._stats_dirty = False
        self._ready = False
        self._checked_dirs: set[tuple[str, ...]] = set()
        # State folders found missing when first asked (a fresh clone has none), until this store
        # writes anything: a plan asks for a thousand keys and objects there, where one stat
        # answers for all of them.
        self._missing: dict[str, bool] = {}
        # The stamp each file had when digest() answered for it: what a no-op memo may vouch for
        # (a stamp taken later could belong to bytes the plan never saw).
        self.observed: dict[str, list[int]] = {}

    # -- paths: nothing inside the state folder may be a link ------------------------------------

    def _path(self, *parts: str) -> Path:
        """`.flexforge/parts...`, every folder on the way a real folder (see fsutil.real_folders)."""
        folders = (STATE_DIR, *parts[:-1])
        if folders not in self._checked_dirs:
            try:
                real_folders(self.root, folders)
            except NotRegularFile as exc:
                raise FlexforgeError(
                    f"{self._label(exc.filename)} {exc.strerror}; flexforge keeps its state in real "
                    f"folders and follows no link there: remove it"
                ) from None
            self._checked_dirs.add(folders)
        return self.dir.joinpath(*parts)

    def _label(self, path: str | Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def ensure(self) -> None:
        """Make the state folder, refusing one that is a link (a hostile repo could commit a
        `.flexforge` link to anywhere) or a file; every write here goes through this first."""
        if self._ready:
            return
        name = self.dir.name
        if self.dir.is_symlink():
            raise FlexforgeError(
                f"{name} is a symbolic link; flexforge keeps its state in a real folder there: remove it"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FlexforgeError(
                f"{name} exists but is not a folder; flexforge keeps its state there: move it away"
            ) from None
        ignore = self._path(".gitignore")
        if not ignore.is_file() or ignore.is_symlink():
            atomic_write(ignore, GITIGNORE.encode(), durable=False)
        self._ready = True

    def warn_once(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            self._warn(message)

    def _untrusted(self, kind: str, path: Path, problem: str) -> None:
        self.warn_once(
            f"untrusted {kind}",
            f"{self._label(path)} {problem}; ignored (flexforge never trusts state it did not write "
            f"on this machine, see docs/security.md){'' if kind == 'journal' else '; others like it too'}",
        )

    # -- file digests, cached by (inode, size, mtime_ns) in the user's cache ---------------------

    def _stat_cache(self) -> dict[str, list[Any]]:
        if self._stats is None:
            self._stats = self._load_stat_cache()
        return self._stats

    def _load_stat_cache(self) -> dict[str, list[Any]]:
        try:
            fd = open_regular(self.cache_dir / STAT_CACHE)
        except OSError:
            return {}
        try:
            written = os.fstat(fd).st_mtime_ns
            with os.fdopen(fd, "rb", closefd=False) as f:
                doc = json.loads(f.read(STATE_FILE_LIMIT))
        except (OSError, ValueError, RecursionError):
            return {}
        finally:
            os.close(fd)
        if not isinstance(doc, dict):
            return {}
        return {
            rel: entry
            for rel, entry in doc.items()
            if isinstance(entry, list)
            and len(entry) == 5
            and all(type(n) is int for n in entry[:4])
            and isinstance(entry[4], str)
            and not racy(entry, written)
        }

    def digest(self, rel: str, stamp: list[int] | None = None) -> str | None:
        """sha256 of the file at root-relative `rel`, or None when it does not exist. Content
        decides freshness; the stat triple only spares re-reading unchanged files. `stamp`: the
        file's, taken by the caller just now."""
        from flexforge import reads
        from flexforge.fsutil import sha256_file

        path = os.path.join(self.root, rel)
        if stamp is None:
            stamp = file_stamp(path)
        if stamp is None:
            return None
        self.observed[rel] = stamp
        cached = self._stat_cache().get(rel)
        if cached is not None and cached[:4] == stamp:
            return str(cached[4])
        # Read already by this process (validation, or `prefetch`) while the file was as it is now.
        read = reads.digest(path, stamp)
        if read is not None and read.from_git:
            return read.sha256  # the lock's word: good for this run, never cached (gitblobs)
        digest = read.sha256 if read is not None else sha256_file(path)
        self._remember(rel, stamp, digest)
        return digest

    def prefetch(self, files: Iterable[tuple[str, int | None]]) -> None:
        """Hash (root-relative file, expected size or None) on all cores before digest() asks for
        them one by one: the files a plan is about to look at. A file the stat cache knows, or
        whose size is not the expected one (only its size is compared), is not read."""
        from flexforge import reads

        known = self._stat_cache()
        root = str(self.root)
        jobs: list[tuple[str, reads.Options]] = []
        for rel, size in files:
            path = os.path.join(root, rel)
            # Validation read the reference files already; digest() checks the stamp.
            if rel not in known and not reads.started(path):
                jobs.append((path, {"size": size}))
        reads.read_all(jobs)

    def remember_written(self, rel: str, digest: str) -> None:
        stamp = file_stamp(str(self.root / rel))
        if stamp is not None:
            self._remember(rel, stamp, digest)

    def _remember(self, rel: str, stamp: list[int], digest: str) -> None:
        self._stat_cache()[rel] = [*stamp, digest]
        self._stats_dirty = True

    def save(self) -> None:
        if self._stats_dirty and self._stats is not None:
            data = json.dumps(self._stats, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(self.cache_dir / STAT_CACHE, data, durable=False)
            except OSError:
                pass  # only a cache: an unwritable home costs speed, not correctness
            self._stats_dirty = False

    # -- object cache: generated images by content -----------------------------------------------

    def object_path(self, sha256: str) -> Path:
        return self._path("objects", sha256[:2], sha256)

    def _none_yet(self, folder: str) -> bool:
        missing = self._missing.get(folder)
        if missing is None:
            missing = self._missing[folder] = not os.path.lexists(self.dir / folder)
        return missing

    def has_object(self, sha256: str) -> bool:
        if self._none_yet("objects"):
            return False
        try:
            path = self.object_path(sha256)
        except FlexforgeError:
            return False
        return path.is_file() and not path.is_symlink()

    def put_object(self, data: bytes, *, durable: bool = False) -> str:
        """Cache `data`. Not fsynced unless `durable` (a paid image, whose journal entry goes
        next): the rest can be rebuilt, and restores check the digest first."""
        self.ensure()
        self._missing.clear()
        digest = sha256_bytes(data)
        path = self.object_path(digest)
        if not self.has_object(digest):
            atomic_write(path, data, durable=durable)
        elif durable:  # cached earlier without fsync: make those bytes durable now
            fd = open_regular(path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return digest

    def read_object(self, sha256: str) -> bytes | None:
        """A cached object's bytes if present and intact; a damaged one is dropped."""
        try:
            data = read_regular(self.object_path(sha256), STATE_FILE_LIMIT)
        except (OSError, FlexforgeError):
            return None
        if sha256_bytes(data) != sha256:
            self.object_path(sha256).unlink(missing_ok=True)
            return None
        return data

    def stage_object(self, sha256: str, dest: Path) -> Path | None:
        """A copy of a cached object staged beside `dest` (see fsutil.install), if the object is
        intact; a damaged one is dropped and None returned."""
        data = self.read_object(sha256)
        if data is None:
            return None
        with staging(dest) as (out, staged):
            out.write(data)
        return staged

    # -- sealed records --------------------------------------------------------------------------

    def _read_record(self, cls: type[R], kind: str, path: Path, name: str) -> R:
        """Raises FileNotFoundError when absent, RecordError when present but not trustworthy."""
        try:
            raw = read_regular(path, RECORD_LIMIT)
        except FileNotFoundError:
            raise
        except (NotRegularFile, FileTooLarge) as exc:
            raise RecordError(exc.strerror or "is unreadable") from None
        except OSError as exc:
            raise RecordError(f"cannot be read ({exc.strerror})") from None
        return typed(cls, unseal(kind, name, raw))

    def _write_record(self, kind: str, path: Path, name: str, record: Any, *, durable: bool) -> None:
        self.ensure()
        self._missing.clear()
        atomic_write(path, seal(kind, name, asdict(record)), durable=durable)

    def key_record(self, key: str) -> KeyRecord | None:
        """What the object cache holds for a content key, if its object is still there."""
        if not HEX64.match(key) or self._none_yet("keys"):
            return None
        try:
            path = self._path("keys", f"{key}.json")
            record = self._read_record(KeyRecord, "key", path, key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except RecordError as exc:
            self._untrusted("key record", self.dir / "keys" / f"{key}.json", str(exc))
            return None
        except FlexforgeError as exc:
            self.warn_once("keys folder", str(exc))
            return None
        return record if self.has_object(record.sha256) else None

    def put_key_record(self, key: str, record: KeyRecord, *, durable: bool = False) -> None:
        self._write_record("key", self._path("keys", f"{key}.json"), key, record, durable=durable)

    # -- seeds drawn for assets that have none in the manifest ------------------------------------

    def pinned_seeds(self) -> dict[str, int]:
        path = self.dir / "seeds.json"
        try:
            raw = read_regular(self._path("seeds.json"), STATE_FILE_LIMIT)
            seeds = unseal("seeds", "", raw)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (RecordError, OSError, FlexforgeError) as exc:
            self._untrusted("seeds", path, str(getattr(exc, "strerror", None) or exc))
            return {}
        return {k: v for k, v in seeds.items() if ASSET_ID.match(k) and type(v) is int and 0 <= v < 2**63}

    def pin_seed(self, asset_id: str, seed: int) -> None:
        """Record a drawn seed before it is used: if the build dies after paying, the next build
        draws nothing new, finds the same key and so the same journaled task."""
        self.ensure()
        seeds = self.pinned_seeds()
        seeds[asset_id] = seed
        atomic_write(self._path("seeds.json"), seal("seeds", "", dict(seeds)))

    # -- outputs being written in place (flexforge/outputs.py) ----------------------------------

    def writing(self) -> dict[str, list[int] | None]:
        """The outputs a build said it would write in place, each with its stamp from before
        (None: no file then); {} when there is no record, or none sealed on this machine."""
        try:
            raw = read_regular(self._path(WRITING), STATE_FILE_LIMIT)
            body = unseal("writing", "", raw)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (RecordError, OSError, FlexforgeError) as exc:
            self._untrusted("writing", self.dir / WRITING, str(getattr(exc, "strerror", None) or exc))
            return {}
        outs = body.get("outs")
        if not isinstance(outs, dict):
            return {}
        return {
            out: before
            for out, before in outs.items()
            if before is None
            or (isinstance(before, list) and len(before) == 4 and all(type(n) is int for n in before))
        }

    def set_writing(self, outs: dict[str, list[int] | None]) -> None:
        """Record (fsynced, with its folder) the outputs about to be written in place, or remove
        the record when there are none left. A record whose removal a power cut loses only
        names files that match the lock, which planning then finds up to date."""
        path = self._path(WRITING)
        if not outs:
            path.unlink(missing_ok=True)
            return
        self.ensure()
        atomic_write(path, seal("writing", "", {"outs": outs}))

    def interrupted_writes(self) -> frozenset[str]:
        """Outputs whose in-place write a build began and never recorded in the lock: changed
        since their stamp in the record (torn, or holding the new bytes), so neither a hand edit
        nor a stranger's file. Planning treats them as absent and restores them again."""
        recorded = self.writing()
        return frozenset(
            out for out, before in recorded.items() if file_stamp(str(self.root / out)) != before
        )

    # -- journal of submitted paid tasks ---------------------------------------------------------

    def _journal_path(self, key: str) -> Path:
        return self._path("journal", f"{key}.json")

    def journal_get(self, key: str) -> JournalEntry | None:
        """The journaled task for `key`. One that is not this machine's, or not well formed, is
        moved to `journal/set-aside/` with a warning: never polled, never lost."""
        if not HEX64.match(key):
            return None
        path = self._journal_path(key)
        try:
            entry = self._read_record(JournalEntry, "journal", path, key)
            if entry.key != key:
                raise RecordError(f"is filed under {key[:12]} but is for key {entry.key[:12]}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except RecordError as exc:
            self._set_aside(path, str(exc))
            return None
        return entry

    def _set_aside(self, path: Path, problem: str) -> None:
        aside = self._path("journal", SET_ASIDE, path.name)
        try:
            aside.parent.mkdir(exist_ok=True)
            os.replace(path, aside)
            where = f"moved to {self._label(aside)}"
        except OSError:
            where = "left where it is"
        self._warn(f"{self._label(path)} {problem}; not used, {where}")

    def journal_put(self, entry: JournalEntry) -> None:
        entry.check()
        # fsynced: the record must be on disk before we wait on a task we are paying for.
        self._write_record("journal", self._journal_path(entry.key), entry.key, entry, durable=True)

    def check_journal_writable(self) -> None:
        """Before the first paid submission: a journal that cannot be written (a full disk, a
        read-only mount) would leave paid tasks unrecorded, so nothing is submitted."""
        self.ensure()
        try:
            probe_writable(self._path("journal", "probe").parent)
        except OSError as exc:
            raise FlexforgeError(
                f"cannot write to {self.dir.name}/journal ({exc.strerror or type(exc).__name__}): "
                "flexforge records each paid task there before waiting on it, so it submits "
                "nothing; free some space or make the folder writable, then build again"
            ) from None

    def journal_remove(self, key: str) -> None:
        self._journal_path(key).unlink(missing_ok=True)

    def journal_entries(self) -> list[JournalEntry]:
        try:
            folder = self._path("journal", "x").parent
        except FlexforgeError:
            return []
        entries = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            entry = self.journal_get(path.stem)
            if entry is not None:
                entries.append(entry)
        return entries

    # -- ledger of spend -------------------------------------------------------------------------

    def ledger_append(self, entry: LedgerEntry) -> None:
        entry.check()
        self.ensure()
        line = seal("ledger", "", asdict(entry)) + b"\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._path("ledger.jsonl"), flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted in its place
                raise FlexforgeError(
                    f"{self._label(self.dir / 'ledger.jsonl')} is not a plain file; remove it"
                )
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def ledger(self) -> list[LedgerEntry]:
        try:
            lines = read_regular(self._path("ledger.jsonl"), STATE_FILE_LIMIT).splitlines()
        except (OSError, FlexforgeError):
            return []
        records = []
        for line in lines:
            try:
                records.append(typed(LedgerEntry, unseal("ledger", "", line)))
            except RecordError:
                # A torn last line after a crash, or a line this machine did not write.
                continue
        return records

    # -- one build at a time ---------------------------------------------------------------------

    @contextmanager
    def build_lock(self, wait: float = 30.0, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold `.flexforge/build.lock`. An OS lock (flock): a killed holder releases it, so a
        stale lock never needs clearing by hand."""
        from filelock import FileLock, Timeout

        self.ensure()
        path = self._path("build.lock")
        if path.is_symlink():
            # filelock >= 3.20.1 opens with O_NOFOLLOW too; say what is wrong rather than fail on it.
            raise FlexforgeError(f"{self._label(path)} is a symbolic link; remove it")
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise FlexforgeError(
                    f"another flexforge build holds {path} (waited {wait:.0f} s); try again when it finishes"
                ) from None
        try:
            yield
        finally:
            lock.release()
