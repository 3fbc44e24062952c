"""The team store seam: content-addressed images, key records and task leases at an fsspec URL.

One implementation over fsspec serves every backend (`s3://`, `gs://`, `az://`, `file://`); what
differs per backend is only how a conditional write is spelled (create-only, compare-and-swap),
registered by URL scheme in `CONDITIONALS`. Everything read back is untrusted: objects are checked
against their sha256 (and by the caller, as an image of the declared format and size), key
records and leases are parsed strictly. Credentials come only from the backend's own environment
and config files, never from the manifest or the lock.

Layout under the URL:
    images/<content key>/<sha>       the image that content key made, named by its sha256, with
                                     its key record (provider, seed, task, cost) alongside: S3
                                     user metadata on the same PUT, elsewhere `<sha>.json` beside it
    leases/<content key>.json        who is making that key now, and the task it submitted

One write per image and one listing for the whole index: the listing of `images/` says which key
made which object, and how big it is, so a plan, a push or a pull asks nothing per image before
moving it. (Layout 1, before this one, kept `objects/` and `keys/` apart: two writes per image.
Its folders are not read.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from flexforge.errors import FlexforgeError, UsageError
from flexforge.settings import RemoteSetting
from flexforge.store import KeyRecord

READONLY_ENV = "FLEXFORGE_REMOTE_READONLY"
REMOTE_ENV = "FLEXFORGE_REMOTE"
WRITE_ENV = "FLEXFORGE_REMOTE_WRITE"
LEASE_TTL_ENV = "FLEXFORGE_LEASE_TTL"
LEASE_TIMEOUT_ENV = "FLEXFORGE_LEASE_TIMEOUT"
DEFAULT_LEASE_TIMEOUT = 30.0  # seconds for one lease call on gs:// or az:// (S3: botocore's own)
DEFAULT_LEASE_TTL = 120.0  # seconds; a live holder renews at a third of it
MAX_OBJECT_BYTES = 64 * 2**20  # far above any FLUX.2 image; a bigger answer is refused unread
MAX_RECORD_BYTES = 64 * 2**10
_HEX64 = re.compile(r"[0-9a-f]{64}")

# The extra that brings each backend's fsspec driver, for the error when it is missing.
EXTRAS = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


class RemoteError(FlexforgeError):
    """The remote cannot be used as configured (bad URL, missing driver, unreachable)."""


class LeasingUnavailable(RemoteError):
    """The backend ignores conditional writes: objects work, leases cannot."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on one content key: its holder is making it, and once the API answered, which
    task to poll for it. `etag` is the version this copy was read at (for compare-and-swap)."""

    key: str
    holder: str
    expires_at: float
    asset: str = ""
    provider: str = ""
    task_id: str | None = None
    polling_url: str | None = None
    cost_credits: float | None = None
    submitted_at: float | None = None
    nonce: str = ""
    etag: str = ""

    def live(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)

    def to_json(self) -> bytes:
        body = dataclasses.asdict(self)
        del body["etag"]
        return json.dumps({"version": 1, **body}, sort_keys=True, allow_nan=False).encode()

    @classmethod
    def parse(cls, key: str, data: bytes, etag: str) -> Lease | None:
        """A lease as another machine wrote it; None when it is not one (treated as expired)."""
        try:
            raw = json.loads(data)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("key") != key:
            return None
        try:
            lease = cls(
                key=key,
                holder=_text(raw.get("holder"), 200) or "?",
                expires_at=_finite(raw.get("expires_at")) or 0.0,
                asset=_text(raw.get("asset"), 500) or "",
                provider=_text(raw.get("provider"), 50) or "",
                task_id=_text(raw.get("task_id"), 200),
                polling_url=_text(raw.get("polling_url"), 2000),
                cost_credits=_finite(raw.get("cost_credits")),
                submitted_at=_finite(raw.get("submitted_at")),
                nonce=_text(raw.get("nonce"), 100) or "",
                etag=etag,
            )
        except (TypeError, ValueError):
            return None
        return lease


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise ValueError("not a short printable string")
    return value


def _finite(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError("not a number")
    number = float(value)
    if number in (float("inf"), float("-inf")) or number < 0:
        raise ValueError("not a finite number >= 0")
    return number


class RemoteStore(Protocol):
    """What the build and the push/pull commands need of a team store."""

    url: str
    read_only: bool

    def get(self, key: str, sha256: str) -> bytes | None: ...
    def fetch(self, key: str, sha256: str) -> Fetched | None: ...
    def put(self, key: str, data: bytes, record: dict[str, Any]) -> str: ...
    def images(self) -> dict[str, tuple[str, int]]: ...
    def held(self) -> set[tuple[str, str]]: ...
    def key_object(self, key: str) -> str | None: ...
    def probe(self) -> str | None: ...
    def lease_acquire(self, lease: Lease) -> Lease | None: ...
    def lease_read(self, key: str) -> Lease | None: ...
    def lease_update(self, lease: Lease, **changes: Any) -> Lease | None: ...
    def lease_takeover(self, old: Lease, new: Lease) -> Lease | None: ...
    def lease_release(self, lease: Lease) -> None: ...


@dataclass(frozen=True, slots=True)
class Fetched:
    """An image read back whole and matching its sha256, with the key record its pusher sent
    (untrusted: checked by whoever uses it; None when absent or not JSON)."""

    data: bytes
    record: dict[str, Any] | None


# Which fields of a key record travel with the image: the sha256 and size are the object's own.
RECORD_FIELDS = ("provider", "seed", "task_id", "cost_usd")
RECORD_META = "flexforge-record"  # S3 user metadata: x-amz-meta-flexforge-record
MAX_META_BYTES = 1800  # S3 allows 2 KB of user metadata per object


def record_bytes(record: dict[str, Any]) -> bytes:
    """The key record as it travels: compact ASCII JSON (an HTTP header value on S3)."""
    body = {name: record.get(name) for name in RECORD_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def parse_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None or len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Objects(Protocol):
    """How one backend stores an image together with its key record."""

    def put(self, path: str, data: bytes, record: bytes) -> None: ...
    def get(self, path: str, limit: int) -> tuple[bytes, bytes | None] | None: ...


class S3Objects:
    """One PUT carrying the record as user metadata; one GET bringing both back. Through
    botocore's own client, on the caller's thread: a transfer then costs one thread and no hop
    through s3fs's event loop, which matters when a push or pull runs hundreds of them
    (regression: `pull` at 1.7x `aws s3 sync`). The client is made with s3fs's settings, or,
    when nothing configures s3fs (no fsspec config), with botocore's alone, s3fs's defaults
    spelled out: then s3fs is never imported (a quarter of a second of CPU on each push/pull)."""

    POOL = 64  # connections: as many as `--jobs` threads can use at once

    def __init__(self, remote: FsspecRemote) -> None:
        self.remote = remote
        self._client: Any = None
        self._made = threading.Lock()

    def botocore(self) -> Any:
        """A botocore S3 client, or None (then s3fs's own calls)."""
        with self._made:
            if self._client is None:
                try:
                    if self.remote.plain_s3:
                        self._client = _botocore_client(None, self.POOL)
                    else:
                        self._client = _botocore_client(self.remote.fs, self.POOL)
                except Exception:  # an option botocore does not take: s3fs's own path still works
                    self._client = False
        return self._client or None

    def put(self, path: str, data: bytes, record: bytes) -> None:
        bucket, key = _split_s3(path)
        meta = {RECORD_META: record.decode("ascii")} if len(record) <= MAX_META_BYTES else {}
        client = self.botocore()
        if client is not None:
            client.put_object(Bucket=bucket, Key=key, Body=data, Metadata=meta)
        else:
            self.remote.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, Metadata=meta)

    def get(self, path: str, limit: int) -> tuple[bytes, bytes | None] | None:
        bucket, key = _split_s3(path)
        # A Range, so that an object planted far bigger than any image is not sent whole.
        span = f"bytes=0-{limit}"
        client = self.botocore()
        if client is None:
            return self._get_s3fs(bucket, key, span, limit)
        try:
            out = client.get_object(Bucket=bucket, Key=key, Range=span)
        except client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            if _status(exc) in (404, 416):  # 416: an empty object asked for a range
                return None
            raise
        body = out["Body"]
        try:
            data = bytes(body.read(limit + 1))  # urllib3 reads until that many bytes, or the end
        finally:
            body.close()
        meta = (out.get("Metadata") or {}).get(RECORD_META)
        return data, meta.encode("utf-8", "replace") if isinstance(meta, str) else None

    def listing(self, prefix: str) -> list[tuple[str, int]] | None:
        """(name, size) of every object under `prefix` (bucket/path), paged by botocore; None
        when there is no client of botocore's own (then s3fs lists)."""
        client = self.botocore()
        if client is None:
            return None
        bucket, key = _split_s3(prefix)
        found: list[tuple[str, int]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
            for item in page.get("Contents") or ():
                found.append((f"{bucket}/{item['Key']}", item.get("Size")))
        return found

    def _get_s3fs(self, bucket: str, key: str, span: str, limit: int) -> tuple[bytes, bytes | None] | None:
        from fsspec.asyn import sync

        fs = self.remote.fs

        async def get() -> tuple[bytes, bytes | None] | None:
            try:
                out = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=span)
            except FileNotFoundError:
                return None
            data = await _read_capped(out["Body"], limit)
            meta = (out.get("Metadata") or {}).get(RECORD_META)
            return data, meta.encode("utf-8", "replace") if isinstance(meta, str) else None

        result: tuple[bytes, bytes | None] | None = sync(fs.loop, get)
        return result


def _split_s3(path: str) -> tuple[str, str]:
    """bucket, key of `bucket/key...` (flexforge's own paths: no version ids, no scheme)."""
    bucket, _, key = path.partition("/")
    return bucket, key


def plain_s3_environment(environ: Any = None) -> bool:
    """Whether nothing could configure s3fs beyond botocore's own chain (AWS_* variables,
    ~/.aws): no FSSPEC_S3* variable (fsspec reads FSSPEC_<PROTOCOL> and FSSPEC_<PROTOCOL>_<ARG>;
    a gs:// or az:// setting says nothing of S3) and no fsspec config folder. Then botocore
    alone, given s3fs's defaults, makes the client s3fs would."""
    environ = os.environ if environ is None else environ
    if any(name.split("_")[1] in ("S3", "S3A") for name in environ if name.startswith("FSSPEC_")):
        return False
    folder = environ.get("FSSPEC_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "fsspec")
    return not os.path.isdir(folder)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = (
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    )
    return status if isinstance(status, int) else None


# s3fs's defaults (S3FileSystem): what a client of botocore's alone is given to match it.
S3FS_DEFAULTS = {"connect_timeout": 5, "read_timeout": 15}


def _botocore_client(fs: Any, pool: int) -> Any:
    """botocore's S3 client with the settings s3fs gives its own (s3fs.S3FileSystem.set_session):
    the same credentials chain, endpoint, profile, client and config options; with `fs` None,
    s3fs's defaults (nothing configures it: see plain_s3_environment)."""
    import botocore.session
    from botocore.config import Config

    if fs is None:
        config: dict[str, Any] = {**S3FS_DEFAULTS, "max_pool_connections": pool}
        return botocore.session.Session().create_client("s3", config=Config(**config), use_ssl=True)
    client_kwargs = dict(fs.client_kwargs)
    init = {
        "aws_access_key_id": fs.key,
        "aws_secret_access_key": fs.secret,
        "aws_session_token": fs.token,
        "endpoint_url": fs.endpoint_url,
    }
    init = {k: v for k, v in init.items() if v is not None and v != client_kwargs.get(k)}
    if "use_ssl" not in client_kwargs:
        init["use_ssl"] = fs.use_ssl
    prepare = getattr(fs, "_prepare_config_kwargs", None)
    config = dict(prepare() if callable(prepare) else fs.config_kwargs)
    config["max_pool_connections"] = max(int(config.get("max_pool_connections") or 0), pool)
    if fs.anon:
        from botocore import UNSIGNED

        for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            init.pop(name, None)
            client_kwargs.pop(name, None)
        config["signature_version"] = UNSIGNED
    session = botocore.session.Session(**fs.kwargs)
    return session.create_client("s3", config=Config(**config), **init, **client_kwargs)


class SidecarObjects:
    """Any other backend: the record in `<path>.json`, written first (so that the image, whose
    name is what the index lists, never stands without it) and read with the image."""

    def __init__(self, remote: FsspecRemote) -> None:
        self.remote = remote

    def put(self, path: str, data: bytes, record: bytes) -> None:
        self.remote._put_whole(path + ".json", record)
        self.remote._put_whole(path, data)

    def get(self, path: str, limit: int) -> tuple[bytes, bytes | None] | None:
        fs = self.remote.fs
        try:
            data = bytes(fs.cat_file(path, start=0, end=limit + 1))
        except FileNotFoundError:
            return None
        try:
            record: bytes | None = bytes(fs.cat_file(path + ".json", start=0, end=MAX_RECORD_BYTES + 1))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            record = None
        return data, record


class Conditional(Protocol):
    """How one backend spells the conditional writes leases need. Each returns the new version
    (an ETag, or what stands for one), or None when the condition failed."""

    def create(self, path: str, data: bytes) -> str | None: ...
    def read(self, path: str) -> tuple[bytes, str] | None: ...
    def swap(self, path: str, data: bytes, etag: str) -> str | None: ...
    def delete(self, path: str, etag: str) -> bool: ...


class S3Conditional:
    """S3 (and what speaks it: moto, MinIO, R2): `If-None-Match: *` and `If-Match` on PUT.
    Through the remote's botocore client when it has one (a lease's round trips are most of a
    team build's store calls), else s3fs's."""

    def __init__(self, remote: FsspecRemote) -> None:
        self.remote = remote

    def _client(self) -> Any:
        return self.remote.s3.botocore() if self.remote.s3 is not None else None

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """Call S3 directly; None when a condition failed (412, or 409 for a concurrent write)."""
        bucket, key = _split_s3(path)
        client = self._client()
        try:
            if client is not None:
                out: dict[str, Any] = getattr(client, method)(Bucket=bucket, Key=key, **kwargs)
            else:
                out = self.remote.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)
        except FileNotFoundError:
            return None
        except Exception as exc:
            if _status(exc) == 404 or _precondition_failed(exc):
                return None
            raise
        return out

    def create(self, path: str, data: bytes) -> str | None:
        out = self._call("put_object", path, Body=data, IfNoneMatch="*")
        return None if out is None else str(out.get("ETag", ""))

    def read(self, path: str) -> tuple[bytes, str] | None:
        bucket, key = _split_s3(path)
        client = self._client()
        if client is None:
            return self._read_s3fs(bucket, key)
        try:
            out = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise
        body = out["Body"]
        try:
            data = bytes(body.read(MAX_RECORD_BYTES + 1))
        finally:
            body.close()
        return data, str(out.get("ETag", ""))

    def _read_s3fs(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        fs = self.remote.fs

        async def get() -> tuple[bytes, str] | None:
            try:
                out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None
            return await _read_capped(out["Body"], MAX_RECORD_BYTES), str(out.get("ETag", ""))

        result: tuple[bytes, str] | None = sync(fs.loop, get)
        return result

    def swap(self, path: str, data: bytes, etag: str) -> str | None:
        out = self._call("put_object", path, Body=data, IfMatch=etag)
        return None if out is None else str(out.get("ETag", ""))

    def delete(self, path: str, etag: str) -> bool:
        return self._call("delete_object", path, IfMatch=etag) is not None


async def _read_capped(stream: Any, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a response body (one more tells the caller it is too big).
    aiobotocore's read(n) returns what has arrived so far, not n bytes: a lone read cut
    bigger images short (regression: they read as damaged)."""
    chunks: list[bytes] = []
    got = 0
    async with stream as body:
        while got <= limit:
            chunk = await body.read(limit + 1 - got)
            if not chunk:
                break
            chunks.append(bytes(chunk))
            got += len(chunk)
    return b"".join(chunks)


def _precondition_failed(exc: BaseException) -> bool:
    """A refused condition, from botocore (its ClientError) or s3fs (an OSError around one)."""
    cause = exc if isinstance(getattr(exc, "response", None), dict) else exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
    return "PreconditionFailed" in str(exc) or "412" in str(exc)


class LocalConditional:
    """A folder (local disk, or a share mounted on every machine): `O_EXCL` to create, and an
    OS lock on a sidecar file around read-compare-rename for compare-and-swap. The version is
    the sha256 of the content, which is unique because every lease carries a fresh nonce."""

    def __init__(self, remote: FsspecRemote) -> None:
        self.remote = remote

    @staticmethod
    def _etag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def create(self, path: str, data: bytes) -> str | None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written whole to a temp file first, then linked in: link() fails if the name exists,
        # and a reader never sees a half-written lease.
        temp = _temp_name(path)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return None
        finally:
            os.unlink(temp)
        return self._etag(data)

    def read(self, path: str) -> tuple[bytes, str] | None:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, self._etag(data)

    @contextlib.contextmanager
    def _locked(self, path: str) -> Any:
        import fcntl

        fd = os.open(path + ".cas", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def swap(self, path: str, data: bytes, etag: str) -> str | None:
        with self._locked(path):
            current = self.read(path)
            if current is None or current[1] != etag:
                return None
            temp = _temp_name(path)
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        return self._etag(data)

    def delete(self, path: str, etag: str) -> bool:
        with self._locked(path):
            current = self.read(path)
            if current is None or current[1] != etag:
                return False
            os.unlink(path)
        return True


def _temp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


# What a released lease becomes on a backend that releases by overwriting (GCS): not a lease
# (it names no key), read as no lease at all, and replaced by the next acquirer with a
# compare-and-swap on its generation.
RELEASED = b'{"released":true,"version":1}'
_T = TypeVar("_T")


class _OnFs:
    """A backend's conditional writes through the remote's fsspec filesystem (opened on first
    use), with that driver's own client, credentials and event loop."""

    def __init__(self, remote: FsspecRemote) -> None:
        self.remote = remote

    @property
    def fs(self) -> Any:
        return self.remote.fs

    def _run(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run one lease call on the driver's loop, cancelled after $FLEXFORGE_LEASE_TIMEOUT
        seconds: the drivers wait up to 300 s a try and try again (regression: a runner waited
        on one unanswered Azure upload for over ten minutes)."""
        import asyncio

        from fsspec.asyn import sync

        limit = lease_timeout()

        async def bounded() -> _T:
            try:
                return await asyncio.wait_for(make(), limit)
            except TimeoutError:
                raise RemoteError(f"remote {self.remote.url}: no answer in {limit:g} s") from None

        result: _T = sync(self.fs.loop, bounded)
        return result


class GCSConditional(_OnFs):
    """Google Cloud Storage, through gcsfs's own HTTP session and credentials: `ifGenerationMatch=0`
    to create, `ifGenerationMatch=<generation>` to swap; the version is the object's generation.
    Uploads are multipart, as gcsfs's own are (the emulator honours preconditions only there).

    A lease is released by a compare-and-swap to `RELEASED`, not by a delete: a conditional
    upload is the one precondition proven here against a server (fake-gcs-server ignores
    `ifGenerationMatch` on DELETE, so a conditional delete could not be tested), and the marker is
    taken over like an expired lease. One marker object stays per content key ever leased."""

    RELEASES_BY_OVERWRITE = True

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return str(bucket), str(key)

    def _upload(self, path: str, data: bytes, generation: str) -> str | None:
        from urllib.parse import quote

        bucket, key = self._split(path)
        meta = json.dumps({"name": key, "contentType": "application/json"}, allow_nan=False)
        # A fresh boundary: a lease carries text from the manifest and the API, which could
        # otherwise end the part early.
        boundary = f"flexforge-{secrets.token_hex(16)}"
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
                f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--".encode()
        )

        async def upload() -> str | None:
            try:
                out = await self.fs._call(
                    "POST",
                    f"{self.fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                    uploadType="multipart",
                    ifGenerationMatch=generation,
                    headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
                    data=body,
                    json_out=True,
                )
            except (FileExistsError, FileNotFoundError):  # gcsfs's 412 and 404
                return None
            return str(out.get("generation") or "") or None

        result = self._run(upload)
        self.fs.invalidate_cache(path)
        return result

    def create(self, path: str, data: bytes) -> str | None:
        return self._upload(path, data, "0")

    def read(self, path: str) -> tuple[bytes, str] | None:
        bucket, key = self._split(path)

        async def get() -> tuple[bytes, str] | None:
            # A Range, so that a lease planted far bigger than any lease is not sent whole.
            span = {"Range": f"bytes=0-{MAX_RECORD_BYTES}"}
            try:
                headers, body = await self.fs._call(
                    "GET", "b/{}/o/{}", bucket, key, alt="media", headers=span
                )
            except FileNotFoundError:
                return None
            except Exception as exc:
                if getattr(exc, "code", None) != 416:  # an empty object asked for a range
                    raise
                headers, body = await self.fs._call("GET", "b/{}/o/{}", bucket, key, alt="media")
            generation = headers.get("x-goog-generation")
            if not generation:
                # No generation with the bytes: ask for it, then for the bytes of exactly that
                # generation (gone meanwhile: replaced, so read again).
                try:
                    info = await self.fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
                    generation = str(info["generation"])
                    _, body = await self.fs._call(
                        "GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation
                    )
                except FileNotFoundError:
                    return await get()
            return bytes(body[: MAX_RECORD_BYTES + 1]), str(generation)

        return self._run(get)

    def swap(self, path: str, data: bytes, etag: str) -> str | None:
        if not etag.isdigit() or etag == "0":
            return None  # not a generation GCS gave; 0 would mean create-only
        return self._upload(path, data, etag)

    def delete(self, path: str, etag: str) -> bool:
        return self.swap(path, RELEASED, etag) is not None


class AzureConditional(_OnFs):
    """Azure Blob Storage, through adlfs's own azure-storage-blob client (its credentials and
    event loop): `If-None-Match: *` to create, `If-Match: <ETag>` to swap and to delete."""

    RELEASES_BY_OVERWRITE = False

    def _blob(self, path: str) -> Any:
        container, key, _ = self.fs.split_path(path)
        return self.fs.service_client.get_blob_client(container, key)

    def create(self, path: str, data: bytes) -> str | None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        async def create() -> str | None:
            try:
                out = await self._blob(path).upload_blob(data, overwrite=False)
            except (ResourceExistsError, ResourceModifiedError):  # 409 BlobAlreadyExists, or 412
                return None
            return str(out["etag"])

        return self._run(create)

    def read(self, path: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        async def read() -> tuple[bytes, str] | None:
            blob = self._blob(path)
            try:
                # A range, so that a lease planted far bigger than any lease is not sent whole.
                stream = await blob.download_blob(offset=0, length=MAX_RECORD_BYTES + 1)
            except ResourceNotFoundError:
                return None
            except HttpResponseError as exc:
                if exc.status_code != 416:  # an empty blob asked for a range (regression: a
                    raise  # planted empty lease stopped every build that met it)
                try:
                    stream = await blob.download_blob()
                except ResourceNotFoundError:
                    return None
            data = await stream.readall()
            return bytes(data[: MAX_RECORD_BYTES + 1]), str(stream.properties.etag)

        return self._run(read)

    def swap(self, path: str, data: bytes, etag: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def swap() -> str | None:
            try:
                out = await self._blob(path).upload_blob(
                    data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                return None
            return str(out["etag"])

        return self._run(swap)

    def delete(self, path: str, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def delete() -> bool:
            try:
                await self._blob(path).delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                return False
            return True

        return self._run(delete)


# URL scheme -> how that backend does conditional writes. A scheme not here still stores
# objects; leasing is refused for it with a clear message.
CONDITIONALS: dict[str, Callable[[Any], Conditional]] = {
    "s3": S3Conditional,
    "s3a": S3Conditional,
    "file": LocalConditional,
    "local": LocalConditional,
    "gs": GCSConditional,
    "gcs": GCSConditional,
    "az": AzureConditional,
    "abfs": AzureConditional,
    "abfss": AzureConditional,
}


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class FsspecRemote:
    """A RemoteStore over any fsspec filesystem."""

    def __init__(self, url: str, *, read_only: bool = False, fs: Any = None) -> None:
        self.url = url
        self.read_only = read_only
        scheme = urlsplit(url).scheme or "file"
        s3 = scheme in ("s3", "s3a")
        # S3 with nothing configuring s3fs: images and listings go through botocore alone, and
        # s3fs is opened only if something needs it (leases, a fallback).
        self.plain_s3 = s3 and fs is None and plain_s3_environment()
        if self.plain_s3:
            root = url.split("://", 1)[1].split("?", 1)[0]
        elif fs is None:
            fs, root = _open_fs(url, scheme)
        else:
            root = url.split("://", 1)[-1]
        self._fs = fs
        self.scheme = scheme
        self.root = root.rstrip("/")
        self.local = scheme in ("file", "local")
        factory = CONDITIONALS.get(scheme)
        self.conditional: Conditional | None = factory(self) if factory is not None else None
        self.s3: S3Objects | None = S3Objects(self) if s3 else None
        self.objects: Objects = self.s3 if self.s3 is not None else SidecarObjects(self)
        self._probed: tuple[str | None] | None = None
        self._opening = threading.Lock()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, opened on first use (see plain_s3)."""
        if self._fs is None:
            with self._opening:
                if self._fs is None:
                    self._fs = _open_fs(self.url, self.scheme)[0]
        return self._fs

    # -- paths --------------------------------------------------------------------------------

    def _image(self, key: str, sha256: str) -> str:
        return f"{self.root}/images/{key}/{sha256}"

    def _lease(self, key: str) -> str:
        return f"{self.root}/leases/{key}.json"

    def _write_guard(self, what: str) -> None:
        if self.read_only:
            # A bug, not a user error: every caller checks read_only first. Never write anyway.
            raise RemoteError(f"remote {self.url} is read-only; not writing {what}")

    # -- images -------------------------------------------------------------------------------

    def fetch(self, key: str, sha256: str) -> Fetched | None:
        """The image `key` made, if the remote holds it intact; None if absent, too big or
        damaged (a damaged one is reported by the caller, and never deleted from a shared
        store). Checked against its sha256 in memory, as read: never written anywhere first."""
        if not (_HEX64.fullmatch(key) and _HEX64.fullmatch(sha256)):
            return None
        found = self.objects.get(self._image(key, sha256), MAX_OBJECT_BYTES)
        if found is None:
            return None
        data, record = found
        if len(data) > MAX_OBJECT_BYTES or hashlib.sha256(data).hexdigest() != sha256:
            return None
        return Fetched(data, parse_record(record))

    def get(self, key: str, sha256: str) -> bytes | None:
        fetched = self.fetch(key, sha256)
        return None if fetched is None else fetched.data

    def put(self, key: str, data: bytes, record: dict[str, Any]) -> str:
        """Store the image `key` made, with its key record: one write on S3."""
        sha = hashlib.sha256(data).hexdigest()
        if not _HEX64.fullmatch(key):
            raise RemoteError(f"not a content key: {key!r}")
        self._write_guard(f"image {sha} of key {key}")
        self.objects.put(self._image(key, sha), data, record_bytes(record))
        return sha

    def _put_whole(self, path: str, data: bytes) -> None:
        """Never a partial object under its final name: an object store's PUT is atomic; a
        folder gets a temp file renamed into place."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = _temp_name(path)
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def images(self) -> dict[str, tuple[str, int]]:
        """content key -> (sha256, size) of its image, from one listing of `images/` (the
        listing is the index: a plan needs no read per asset). A key with several images (two
        machines that both paid for it) maps to the smallest sha256, on every machine alike."""
        index: dict[str, tuple[str, int]] = {}
        for name, size in self._listing():
            parts = str(name).rsplit("/", 2)
            if len(parts) != 3 or not isinstance(size, int) or isinstance(size, bool):
                continue
            key, sha = parts[1], parts[2]
            if _HEX64.fullmatch(key) and _HEX64.fullmatch(sha) and (key not in index or sha < index[key][0]):
                index[key] = (sha, size)
        return index

    def held(self) -> set[tuple[str, str]]:
        """Every (content key, sha256) the remote holds, from the same one listing."""
        pairs = set()
        for name, _ in self._listing():
            parts = str(name).rsplit("/", 2)
            if len(parts) == 3 and _HEX64.fullmatch(parts[1]) and _HEX64.fullmatch(parts[2]):
                pairs.add((parts[1], parts[2]))
        return pairs

    def _remove(self, path: str) -> None:
        client = self.s3.botocore() if self.s3 is not None else None
        if client is not None:
            client.delete_object(Bucket=_split_s3(path)[0], Key=_split_s3(path)[1])
        else:
            self.fs.rm_file(path)

    def _listing(self) -> list[tuple[str, Any]]:
        """(name, size) of everything under `images/`, listed now (another machine may have
        written since the last look): S3's own paged listing when botocore's client serves,
        else fsspec's."""
        listed = self.s3.listing(f"{self.root}/images") if self.s3 is not None else None
        if listed is not None:
            return listed
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(f"{self.root}/images", detail=True)
        except FileNotFoundError:
            return []
        return [(str(name), info.get("size")) for name, info in found.items()]

    def key_object(self, key: str) -> str | None:
        """The image one content key made, from a listing of its folder alone."""
        path = f"{self.root}/images/{key}"
        names: list[str] | None = None
        if self.s3 is not None:
            listed = self.s3.listing(path)
            names = None if listed is None else [name for name, _ in listed]
        if names is None:
            self.fs.invalidate_cache(path)
            try:
                names = [str(n) for n in self.fs.ls(path, detail=False)]
            except FileNotFoundError:
                return None
        shas = sorted(n for n in (str(n).rsplit("/", 1)[-1] for n in names) if _HEX64.fullmatch(n))
        return shas[0] if shas else None

    # -- leases -------------------------------------------------------------------------------

    def probe(self) -> str | None:
        """Why leases cannot be used here, or None when they can: a create-only write is tried
        twice on a fresh name, and the second must be refused. Asked once per run."""
        if self._probed is not None:
            return self._probed[0]
        reason: str | None = None
        if self.read_only:
            reason = "the remote is read-only"
        elif self.conditional is None:
            reason = (
                f"flexforge does not know how to make conditional writes on {self.scheme}:// "
                f"(it does on {', '.join(sorted(k + '://' for k in CONDITIONALS))})"
            )
        else:
            reason = self._probe_writes(f"{self.root}/leases/probe-{secrets.token_hex(8)}.json")
        self._probed = (reason,)
        return reason

    def _probe_writes(self, path: str) -> str | None:
        """Create-only twice on a fresh name (the second must be refused), then a compare-and-swap
        from a version the object never had (refused too), and one from its own (accepted)."""
        assert self.conditional is not None
        first = self.conditional.create(path, b"{}")
        if first is None:
            return "a create-only write on a fresh name was refused"
        # Removed afterwards only once made: a store that did not answer the create is not
        # asked again (a plain delete has no timeout of flexforge's; the drivers wait 300 s).
        try:
            if self.conditional.create(path, b"{}") is not None:
                return f"{self.url} ignores conditional writes (a create-only write was accepted twice)"
            stale = _stale_version(first)
            if self.conditional.swap(path, b'{"probe":1}', stale) is not None:
                return (
                    f"{self.url} ignores conditional writes "
                    "(a compare-and-swap on a stale version was accepted)"
                )
            if self.conditional.swap(path, b'{"probe":2}', first) is None:
                return "a compare-and-swap on the current version was refused"
            return None
        finally:
            with contextlib.suppress(Exception):
                self._remove(path)

    def lease_acquire(self, lease: Lease) -> Lease | None:
        """Create the lease on a key nobody holds: create-only, or over a released marker (on a
        backend that releases by overwriting) by compare-and-swap on the marker's version."""
        self._write_guard(f"lease {lease.key}")
        assert self.conditional is not None
        path = self._lease(lease.key)
        etag = self.conditional.create(path, lease.to_json())
        if etag is None and getattr(self.conditional, "RELEASES_BY_OVERWRITE", False):
            found = self.conditional.read(path)
            if found is not None and found[0] == RELEASED:
                etag = self.conditional.swap(path, lease.to_json(), found[1])
        return None if etag is None else dataclasses.replace(lease, etag=etag)

    def lease_read(self, key: str) -> Lease | None:
        """The lease on `key`, or None when there is none. An unreadable one reads as expired,
        so that it can be taken over rather than block the key for ever."""
        assert self.conditional is not None
        found = self.conditional.read(self._lease(key))
        if found is None:
            return None
        data, etag = found
        if data == RELEASED and getattr(self.conditional, "RELEASES_BY_OVERWRITE", False):
            return None  # released: lease_acquire takes it (elsewhere a planted marker reads as
            # an expired lease, taken over: read as none, claim would retry its create for ever)
        parsed = Lease.parse(key, data, etag) if len(data) <= MAX_RECORD_BYTES else None
        return parsed or Lease(key=key, holder="?", expires_at=0.0, etag=etag)

    def lease_update(self, lease: Lease, **changes: Any) -> Lease | None:
        """The holder's own change (task id, renewal); None when someone took the lease over."""
        self._write_guard(f"lease {lease.key}")
        assert self.conditional is not None
        new = dataclasses.replace(lease, **changes, nonce=secrets.token_hex(8))
        etag = self.conditional.swap(self._lease(lease.key), new.to_json(), lease.etag)
        return None if etag is None else dataclasses.replace(new, etag=etag)

    def lease_takeover(self, old: Lease, new: Lease) -> Lease | None:
        """Replace an expired lease, if nobody changed it since it was read."""
        self._write_guard(f"lease {old.key}")
        assert self.conditional is not None
        etag = self.conditional.swap(self._lease(old.key), new.to_json(), old.etag)
        return None if etag is None else dataclasses.replace(new, etag=etag)

    def lease_release(self, lease: Lease) -> None:
        self._write_guard(f"lease {lease.key}")
        assert self.conditional is not None
        self.conditional.delete(self._lease(lease.key), lease.etag)


def _stale_version(version: str) -> str:
    """A version of the same form as `version` that the object never had."""
    if version.isdigit():  # a GCS generation
        return str(int(version) + 1)
    quoted = version.startswith('"')
    core = version.strip('"')
    changed = ("1" if core[:1] != "1" else "2") + core[1:] if core else "stale"
    return f'"{changed}"' if quoted else changed


def _open_fs(url: str, scheme: str) -> tuple[Any, str]:
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise RemoteError("the remote needs fsspec: pip install fsspec") from None
    try:
        # A fresh instance: fsspec's cache would keep one made under another environment.
        fs, root = url_to_fs(url, skip_instance_cache=True)
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'flexforge[{extra}]'" if extra else "install its fsspec driver"
        raise RemoteError(f"remote {url}: no driver for {scheme}:// installed; {hint}") from None
    except (ValueError, KeyError) as exc:
        raise RemoteError(f"remote {url}: {exc}") from None
    del fsspec
    return fs, str(root)


def read_only_from_env(configured: bool) -> bool:
    value = os.environ.get(READONLY_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return configured
    if value in ("1", "true", "yes"):
        return True
    raise RemoteError(f"{READONLY_ENV}={value!r}: use 1 (read-only) or 0")


def env_seconds(name: str, default: float, low: float, high: float) -> float:
    """A duration knob from the environment, refused (one line, naming it) when not in range."""
    from flexforge import knobs

    try:
        return knobs.seconds(name, default, low=low, high=high)
    except UsageError as exc:
        raise RemoteError(str(exc)) from None


def lease_ttl() -> float:
    return env_seconds(LEASE_TTL_ENV, DEFAULT_LEASE_TTL, 1.0, 86400.0)


def lease_timeout() -> float:
    return env_seconds(LEASE_TIMEOUT_ENV, DEFAULT_LEASE_TIMEOUT, 0.1, 3600.0)


class RemoteIndex:
    """What the team remote holds, by content key, for one plan or build: listed once, on the
    first key the local state lacks (so an up-to-date project never touches the network)."""

    def __init__(self, remote: FsspecRemote, warn: Callable[[str], None]) -> None:
        self.remote = remote
        self.warn = warn
        self._index: dict[str, tuple[str, int]] | None = None
        self._keys: dict[str, str] = {}  # sha256 -> a key whose image it is
        self._told: dict[str, dict[str, Any] | None] = {}  # key -> the record fetched with it

    def record(self, key: str) -> tuple[str, int] | None:
        """(sha256, size) of the image the remote holds for `key`, from one listing made once."""
        if self._index is None:
            try:
                self._index = self.remote.images()
            except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
                self.warn(f"remote {self.remote.url} cannot be listed ({exc}); planning without it")
                self._index = {}
            self._keys = {sha: k for k, (sha, _) in self._index.items()}
        return self._index.get(key)

    def details(self, key: str, sha256: str, size: int) -> KeyRecord | None:
        """The key record another machine pushed with the image (fetched with it), if sound."""
        raw = self._told.get(key)
        if raw is None:
            return None
        try:
            record = KeyRecord(
                sha256, size, raw["provider"], raw["seed"], raw.get("task_id"), raw.get("cost_usd")
            )
            record.check()
        except Exception:  # missing, wrong types: the record is only a nicety
            return None
        return record

    def fetch(self, sha256: str) -> bytes | None:
        key = self._keys.get(sha256)
        if key is None:
            return None
        try:
            fetched = self.remote.fetch(key, sha256)
        except Exception as exc:  # each backend raises its own kinds (botocore, aiohttp, ...)
            self.warn(f"remote {self.remote.url}: cannot read object {sha256[:12]} ({exc})")
            return None
        if fetched is None:
            return None
        self._told[key] = fetched.record
        return fetched.data


def configured_remote(setting: RemoteSetting | None) -> FsspecRemote | None:
    """The project's remote: $FLEXFORGE_REMOTE (empty or `none` turns it off), else the manifest's
    `settings: remote:` (`url`, optional `read_only`)."""
    env = os.environ.get(REMOTE_ENV)
    if env is not None:
        env = env.strip()
        return None if env.lower() in ("", "none", "off") else open_remote(env)
    if setting is None:
        return None
    # The manifest is the repository's word, and the repository is untrusted (docs/security.md):
    # it may say where to read verified images from, but flexforge writes (images, leases) only
    # where the user's environment says so, or a clone could have it write anywhere its
    # credentials reach (`file:///home/you/...`, another team's bucket).
    return open_remote(setting.url, read_only=setting.read_only or not writes_allowed())


def writes_allowed() -> bool:
    """$FLEXFORGE_REMOTE_WRITE=1: the user lets flexforge write to the remote the manifest names."""
    value = os.environ.get(WRITE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise RemoteError(f"{WRITE_ENV}={value!r}: use 1 (write to the manifest's remote) or 0")


def open_remote(url: str, *, read_only: bool = False) -> FsspecRemote:
    """The remote at `url`; read-only also when $FLEXFORGE_REMOTE_READONLY=1."""
    if "://" not in url:
        raise RemoteError(
            f"remote {url!r}: give a URL such as s3://bucket/prefix or file:///mnt/share/flexforge"
        )
    parts = urlsplit(url)
    if parts.password or (parts.username and parts.scheme != "file"):
        # Credentials belong in the backend's own environment or config, never in the project.
        raise RemoteError(
            f"remote {parts.scheme}://...: credentials in the URL are refused; use the backend's "
            f"usual environment or config (AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...)"
        )
    return FsspecRemote(url, read_only=read_only_from_env(read_only))
