"""Sealing the records flexforge keeps in a project, so that only this machine's own are trusted.

`.flexforge/` sits inside a repository, and a repository is untrusted input: anyone can
`git add -f` a journal entry, key record or seed file into it. Each record is therefore sealed
with an HMAC under a key made on first use in the user's data folder, which never leaves the
machine. A record whose seal does not verify (committed, copied from another machine, edited) is
set aside with a warning and never used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from functools import cache
from pathlib import Path
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.fsutil import FileTooLarge, NotRegularFile, fsync_dir, read_regular
from flexforge.paths import DATA_DIR_ENV, user_data_root

KEY_FILE = "machine.key"
RECORD_VERSION = 1


class RecordError(ValueError):
    """A record that cannot be trusted: unreadable, not sealed here, or of the wrong shape."""


def machine_key() -> bytes:
    """This machine's sealing key, made (0600, fsynced) on first use."""
    return _key_at(Path(user_data_root()) / KEY_FILE)


@cache  # by path: one process may serve several users' environments (tests, a server)
def _key_at(path: Path) -> bytes:
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_whole(path, secrets.token_hex(32).encode() + b"\n")
    except FileExistsError:
        pass  # another flexforge (or thread) made it just now
    except OSError as exc:
        raise FlexforgeError(
            f"cannot create flexforge's machine key at {path}: {exc.strerror}; "
            f"set {DATA_DIR_ENV} to a writable folder"
        ) from None
    return _read_key(path)


def _create_whole(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, or raise FileExistsError; never visible half-written. (An
    O_EXCL create followed by the write let a second process or thread read an empty key in
    between, and fail with "too short"; a fully written temp file linked in cannot be seen early.)"""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_new(temp, data)
        try:
            os.link(temp, path)  # fails if a key is there: the first one made stays
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: create in place, as before
            _write_new(path, data)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key(path: Path) -> bytes:
    try:
        text = read_regular(path, 4096).strip()
    except (NotRegularFile, FileTooLarge) as exc:
        raise FlexforgeError(f"{path} {exc.strerror}; remove it and flexforge makes a new key") from None
    if len(text) < 32:
        raise FlexforgeError(f"{path} is too short to be flexforge's machine key; remove it")
    return text


def _mac(kind: str, name: str, canonical: bytes) -> str:
    message = f"{kind}\0{name}\0".encode() + canonical
    return hmac.new(machine_key(), message, hashlib.sha256).hexdigest()


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(kind: str, name: str, body: dict[str, Any]) -> bytes:
    """`body` as a record of `kind` stored under `name`: the seal covers all three, so a record
    moved to another name (another asset's key) no longer verifies."""
    data = canonical(body)
    return canonical({"v": RECORD_VERSION, "mac": _mac(kind, name, data), "body": body})


def unseal(kind: str, name: str, raw: bytes) -> dict[str, Any]:
    """The body of a record sealed on this machine, or RecordError saying why it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise RecordError("is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != RECORD_VERSION:
        raise RecordError("is not a flexforge record")
    body, mac = doc.get("body"), doc.get("mac")
    if not isinstance(body, dict) or not isinstance(mac, str):
        raise RecordError("is not a flexforge record")
    try:
        expected = _mac(kind, name, canonical(body))
    except (ValueError, TypeError):
        raise RecordError("holds values flexforge never writes") from None
    if not hmac.compare_digest(mac, expected):
        raise RecordError("was not written by flexforge on this machine")
    return body
