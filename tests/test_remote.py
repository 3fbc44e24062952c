"""The team store seam against a real S3-compatible server (moto) and a real folder."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flexforge.remote import (
    MAX_RECORD_BYTES,
    RELEASED,
    FsspecRemote,
    Lease,
    RemoteError,
    holder_id,
    open_remote,
)
from tests.support.azure import AzureServer, azure_env, azure_server
from tests.support.gcs import GCSServer, gcs_env, gcs_server
from tests.support.s3 import S3Server, s3_env, s3_server

__all__ = ["azure_env", "azure_server", "gcs_env", "gcs_server", "s3_env", "s3_server"]


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(params=["file", "s3", "s3 configured through fsspec", "gcs", "azure"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'share'}"
    if request.param == "gcs":
        gcs: GCSServer = request.getfixturevalue("gcs_env")
        return f"gs://{gcs.new_bucket()}/team/images"
    if request.param == "azure":
        azure: AzureServer = request.getfixturevalue("azure_env")
        return f"az://{azure.new_container()}/team/images"
    server: S3Server = request.getfixturevalue("s3_env")
    if request.param != "s3":
        # fsspec's own configuration (FSSPEC_<PROTOCOL>_<OPTION>): s3fs is opened with it, and
        # botocore's client is made from s3fs's settings.
        monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", server.endpoint)
    return f"s3://{server.new_bucket()}/team/images"


KEY = hashlib.sha256(b"a content key").hexdigest()
RECORD = {"provider": "emulator", "seed": 7, "task_id": "t-1", "cost_usd": 0.03, "sha256": "x"}


def test_images_round_trip_content_addressed_with_their_record(remote_url: str) -> None:
    remote = open_remote(remote_url)
    data = png()
    sha = remote.put(KEY, data, RECORD)
    assert sha == hashlib.sha256(data).hexdigest()
    fetched = remote.fetch(KEY, sha)
    assert fetched is not None and fetched.data == data
    assert fetched.record == {"provider": "emulator", "seed": 7, "task_id": "t-1", "cost_usd": 0.03}
    assert remote.held() == {(KEY, sha)}
    assert remote.get(KEY, "0" * 64) is None
    assert remote.get("0" * 64, sha) is None  # the same bytes under another key: not that key's


def test_the_index_comes_from_one_listing(remote_url: str) -> None:
    remote = open_remote(remote_url)
    keys = [hashlib.sha256(f"key{i}".encode()).hexdigest() for i in range(3)]
    shas = [remote.put(key, png((i, 0, 0)), RECORD) for i, key in enumerate(keys)]
    sizes = [len(png((i, 0, 0))) for i in range(3)]
    expected = {k: (s, n) for k, s, n in zip(keys, shas, sizes, strict=True)}
    assert open_remote(remote_url).images() == expected
    assert open_remote(remote_url).key_object(keys[1]) == shas[1]


def test_a_key_with_two_images_maps_to_the_same_one_on_every_machine(remote_url: str) -> None:
    remote = open_remote(remote_url)
    shas = sorted(remote.put(KEY, png((i, 9, 9)), RECORD) for i in range(2))
    assert remote.images()[KEY][0] == shas[0] == remote.key_object(KEY)


def test_one_write_per_image_on_s3(s3_env: S3Server) -> None:
    """A push wrote the image and then a key record naming it: two PUTs per image, half the
    speed of `aws s3 sync` on the same server. The record now rides in the image's metadata."""
    bucket = s3_env.new_bucket()
    remote = open_remote(f"s3://{bucket}/team")
    sha = remote.put(KEY, png(), RECORD)
    assert list(s3_env.keys(bucket)) == [f"team/images/{KEY}/{sha}"]
    fetched = remote.fetch(KEY, sha)
    assert fetched is not None and fetched.record is not None and fetched.record["seed"] == 7


def test_a_big_image_comes_back_whole(remote_url: str) -> None:
    """The S3 body arrives in pieces: one read of it returned the first few and the image read
    as damaged."""
    import os

    remote = open_remote(remote_url)
    data = os.urandom(3 * 2**20)
    sha = remote.put(KEY, data, RECORD)
    assert remote.get(KEY, sha) == data


def test_a_damaged_object_is_not_returned(remote_url: str) -> None:
    remote = open_remote(remote_url)
    data = png()
    sha = remote.put(KEY, data, RECORD)
    write_behind_its_back(remote, remote._image(KEY, sha), data[:-10])  # damaged behind flexforge's back
    assert remote.get(KEY, sha) is None


def test_an_oversized_object_is_refused_without_reading_it_all(
    remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flexforge.remote

    monkeypatch.setattr(flexforge.remote, "MAX_OBJECT_BYTES", 40)
    remote = open_remote(remote_url)
    data = png()
    sha = hashlib.sha256(data).hexdigest()
    write_behind_its_back(remote, remote._image(KEY, sha), data)
    assert remote.get(KEY, sha) is None


def test_a_hostile_record_reads_as_none_and_the_image_still_restores(remote_url: str) -> None:
    remote = open_remote(remote_url)
    data = png()
    sha = remote.put(KEY, data, RECORD)
    if remote.scheme != "s3":  # the record in a sidecar object beside the image
        write_behind_its_back(remote, remote._image(KEY, sha) + ".json", b"[1, 2" + b" " * 100_000)
    else:
        bucket, key, _ = remote.fs.split_path(remote._image(KEY, sha))
        remote.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, Metadata={"flexforge-record": "{"})
    fetched = remote.fetch(KEY, sha)
    assert fetched is not None and fetched.data == data and fetched.record is None


def test_read_only_remote_is_never_written(remote_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXFORGE_REMOTE_READONLY", "1")
    remote = open_remote(remote_url)
    assert remote.read_only
    with pytest.raises(RemoteError, match="read-only"):
        remote.put(KEY, png(), RECORD)
    assert remote.probe() == "the remote is read-only"
    monkeypatch.delenv("FLEXFORGE_REMOTE_READONLY")
    assert open_remote(remote_url).images() == {}


def write_behind_its_back(remote: FsspecRemote, path: str, data: bytes) -> None:
    """Write as another tool would, with no help from flexforge."""
    remote.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    remote.fs.pipe_file(path, data)


def lease(key: str, ttl: float = 60.0) -> Lease:
    return Lease(key=key, holder=holder_id(), expires_at=time.time() + ttl, asset="hero", provider="emulator")


def test_lease_is_create_only(remote_url: str) -> None:
    remote = open_remote(remote_url)
    assert remote.probe() is None
    key = "c" * 64
    mine = remote.lease_acquire(lease(key))
    assert mine is not None
    assert remote.lease_acquire(lease(key)) is None
    seen = remote.lease_read(key)
    assert seen is not None and seen.holder == mine.holder and seen.live()


def test_lease_update_is_compare_and_swap(remote_url: str) -> None:
    remote = open_remote(remote_url)
    key = "d" * 64
    mine = remote.lease_acquire(lease(key))
    assert mine is not None
    updated = remote.lease_update(mine, task_id="t-1", polling_url="http://127.0.0.1:1/poll?id=t-1")
    assert updated is not None
    seen = remote.lease_read(key)
    assert seen is not None and seen.task_id == "t-1" and seen.etag == updated.etag
    # The stale copy (an older version) can no longer write.
    assert remote.lease_update(mine, task_id="t-2") is None
    assert remote.lease_read(key).task_id == "t-1"  # type: ignore[union-attr]


def test_expired_lease_is_taken_over_by_exactly_one(remote_url: str) -> None:
    remote = open_remote(remote_url)
    key = "e" * 64
    assert remote.lease_acquire(lease(key, ttl=-1)) is not None
    old = remote.lease_read(key)
    assert old is not None and not old.live()
    first = remote.lease_takeover(old, lease(key))
    second = remote.lease_takeover(old, lease(key))
    assert first is not None and second is None
    assert remote.lease_read(key).holder == first.holder  # type: ignore[union-attr]


def test_release_removes_only_the_version_held(remote_url: str) -> None:
    remote = open_remote(remote_url)
    key = "f" * 64
    mine = remote.lease_acquire(lease(key))
    assert mine is not None
    newer = remote.lease_update(mine, task_id="t")
    remote.lease_release(mine)  # stale version: the newer lease stays
    assert remote.lease_read(key) is not None
    assert newer is not None
    remote.lease_release(newer)
    assert remote.lease_read(key) is None
    assert remote.lease_acquire(lease(key)) is not None


def test_a_garbage_lease_reads_as_expired(remote_url: str) -> None:
    remote = open_remote(remote_url)
    key = "1" * 64
    write_behind_its_back(
        remote, remote._lease(key), b'{"key": "' + key.encode() + b'", "expires_at": 1e999}'
    )
    seen = remote.lease_read(key)
    assert seen is not None and not seen.live()
    assert remote.lease_takeover(seen, lease(key)) is not None


def test_hostile_lease_fields_are_refused(remote_url: str) -> None:
    remote = open_remote(remote_url)
    key = "2" * 64
    good = dataclasses.replace(lease(key), task_id="x\r\nHost: evil")
    write_behind_its_back(remote, remote._lease(key), good.to_json())
    seen = remote.lease_read(key)
    assert seen is not None and seen.task_id is None and not seen.live()


@pytest.mark.parametrize("size", [0, 2 * 2**20])
def test_an_empty_or_oversized_lease_reads_as_expired_without_reading_it_all(
    remote_url: str, size: int
) -> None:
    remote = open_remote(remote_url)
    key = "3" * 64
    write_behind_its_back(remote, remote._lease(key), b"{" * size)
    assert remote.conditional is not None
    found = remote.conditional.read(remote._lease(key))
    assert found is not None and len(found[0]) <= MAX_RECORD_BYTES + 1  # capped, not 2 MB
    seen = remote.lease_read(key)
    assert seen is not None and not seen.live()
    assert remote.lease_takeover(seen, lease(key)) is not None


def test_a_planted_released_marker_never_blocks_a_key(remote_url: str) -> None:
    """The marker a GCS release leaves, planted on any backend: the key can still be leased
    (regression: read as no lease on S3, the claim retried its create-only write for ever)."""
    remote = open_remote(remote_url)
    key = "4" * 64
    write_behind_its_back(remote, remote._lease(key), RELEASED)
    got = remote.lease_acquire(lease(key))
    if got is None:  # not a backend that releases by overwriting: an expired lease, taken over
        seen = remote.lease_read(key)
        assert seen is not None and not seen.live()
        got = remote.lease_takeover(seen, lease(key))
    assert got is not None
    assert remote.lease_acquire(lease(key)) is None  # and now it is held
    assert remote.lease_read(key).holder == got.holder  # type: ignore[union-attr]


class _Silent:
    """A loopback server that accepts connections and never answers."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_a_lease_call_the_store_never_answers_is_given_up(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a runner waited on one unanswered Azure upload for over ten minutes (the
    drivers wait 300 s a try, and try again). Now each lease call is cancelled after
    $FLEXFORGE_LEASE_TIMEOUT and fails with one line; the build's probe reads that as "no
    leases", and a claim tries again, then goes on without."""
    from tests.support.azure import AzureServer
    from tests.support.gcs import GCSServer, use_gcs

    silent = _Silent()
    try:
        endpoint = f"http://127.0.0.1:{silent.port}"
        if scheme == "gs":
            use_gcs(GCSServer(endpoint), monkeypatch)
        else:
            for name, value in AzureServer(endpoint).env().items():
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("FLEXFORGE_LEASE_TIMEOUT", "0.5")
        remote = open_remote(f"{scheme}://team/x")
        with pytest.raises(RemoteError, match=r"no answer in 0\.5 s"):
            remote.probe()
        with pytest.raises(RemoteError, match="no answer"):
            remote.lease_read("5" * 64)
    finally:
        silent.close()


def test_backend_that_ignores_conditional_writes_is_refused_for_leasing(tmp_path: Path) -> None:
    class Ignoring:
        def __init__(self, fs: object) -> None:
            self.fs = fs

        def create(self, path: str, data: bytes) -> str | None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
            return "etag"

    remote = FsspecRemote(f"file://{tmp_path}")
    remote.conditional = Ignoring(remote.fs)  # type: ignore[assignment]
    reason = remote.probe()
    assert reason is not None and "ignores conditional writes" in reason
    sha = remote.put(KEY, png(), RECORD)
    assert remote.get(KEY, sha) is not None  # objects still work


def test_unknown_scheme_stores_objects_but_refuses_leases(tmp_path: Path) -> None:
    remote = open_remote("memory://team/x")
    sha = remote.put(KEY, png(), RECORD)
    assert remote.get(KEY, sha) == png()
    reason = remote.probe()
    assert reason is not None and "memory://" in reason


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(RemoteError, match="credentials in the URL are refused"):
        open_remote("s3://AKIA:secret@bucket/x")
    with pytest.raises(RemoteError, match="give a URL"):
        open_remote("bucket/x")


@pytest.mark.parametrize(
    ("url", "module", "extra"), [("gs://b/x", "gcsfs", "gcs"), ("az://c/x", "adlfs", "azure")]
)
def test_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    # fsspec keeps each driver class once imported: forget it for this test.
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, url.split(":")[0], raising=False)
    with pytest.raises(RemoteError, match=rf"flexforge\[{extra}\]"):
        open_remote(url)


def test_the_project_names_its_remote_in_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flexforge.remote import configured_remote
    from flexforge.settings import Settings

    monkeypatch.delenv("FLEXFORGE_REMOTE", raising=False)
    assert configured_remote(Settings().remote) is None
    settings = Settings.from_data({"remote": {"url": f"file://{tmp_path}/share", "read_only": True}})
    remote = configured_remote(settings.remote)
    assert remote is not None and remote.read_only and remote.url.endswith("/share")
    assert Settings.from_data(settings.to_json()) == settings  # the validated-manifest cache keeps it
    monkeypatch.setenv("FLEXFORGE_REMOTE", "none")
    assert configured_remote(settings.remote) is None
    monkeypatch.setenv("FLEXFORGE_REMOTE", f"file://{tmp_path}/other")
    other = configured_remote(settings.remote)
    assert other is not None and other.url.endswith("/other") and not other.read_only


def test_a_remote_named_by_the_manifest_is_written_only_when_the_user_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone's `settings: remote: file:///home/you/.ssh` made every build write objects and
    leases wherever the repository chose (or into any bucket the user's credentials reach)."""
    from flexforge.remote import configured_remote
    from flexforge.settings import Settings
    from tests.helpers import Project

    monkeypatch.delenv("FLEXFORGE_REMOTE", raising=False)
    monkeypatch.delenv("FLEXFORGE_REMOTE_WRITE", raising=False)
    chosen = tmp_path / "chosen-by-the-repository"
    chosen.mkdir()
    settings = Settings.from_data({"remote": {"url": f"file://{chosen}"}})
    remote = configured_remote(settings.remote)
    assert remote is not None and remote.read_only
    project = Project(tmp_path / "repo")
    project.manifest(f"""
        version: 1
        settings: {{provider: draft, remote: {{url: "file://{chosen}"}}}}
        defaults: {{width: 64, height: 64}}
        assets:
          a: {{prompt: "one", seed: 1}}
    """)
    assert project.run("build").exit_code == 0
    assert list(chosen.rglob("*")) == []
    monkeypatch.setenv("FLEXFORGE_REMOTE_WRITE", "1")
    writable = configured_remote(settings.remote)
    assert writable is not None and not writable.read_only
    monkeypatch.setenv("FLEXFORGE_REMOTE_WRITE", "maybe")
    with pytest.raises(RemoteError, match="FLEXFORGE_REMOTE_WRITE"):
        configured_remote(settings.remote)


def test_a_remote_setting_is_checked_by_the_manifest_schema(tmp_path: Path) -> None:
    from flexforge.errors import ManifestError
    from flexforge.manifest import load_manifest

    path = tmp_path / "flexforge.yaml"
    path.write_text('version: 1\nsettings: {remote: {url: "bucket/x"}}\nassets: {a: {prompt: "x"}}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "settings" in str(info.value) and "remote" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEXFORGE_REMOTE_READONLY", "maybe"),
        ("FLEXFORGE_LEASE_TTL", "nan"),
        ("FLEXFORGE_LEASE_TIMEOUT", "0"),
    ],
)
def test_bad_remote_knobs_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    from flexforge.remote import lease_timeout, lease_ttl

    monkeypatch.setenv(name, value)
    with pytest.raises(RemoteError, match=name):
        open_remote("memory://x")
        lease_ttl()
        lease_timeout()


def test_s3_images_travel_through_s3fs_when_botocore_cannot_be_configured(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path is botocore's client made with s3fs's settings; an option it does not take
    falls back to s3fs's own calls rather than failing the transfer."""
    import flexforge.remote

    def refuse(fs: object, pool: int) -> object:
        raise TypeError("an option botocore does not take")

    monkeypatch.setattr(flexforge.remote, "_botocore_client", refuse)
    remote = open_remote(f"s3://{s3_env.new_bucket()}/team")
    data = png()
    sha = remote.put(KEY, data, RECORD)
    fetched = remote.fetch(KEY, sha)
    assert fetched is not None and fetched.data == data and fetched.record is not None
    assert remote.get(KEY, "0" * 64) is None


def test_s3_images_listings_and_leases_need_no_s3fs_when_nothing_configures_it(s3_env: S3Server) -> None:
    """botocore alone, with s3fs's defaults, when no fsspec config could change what s3fs would
    do: push and pull then skip s3fs's import (a quarter of a second of CPU each)."""
    import subprocess
    import sys

    bucket = s3_env.new_bucket()
    script = f"""
import sys
from flexforge.remote import Lease, holder_id, open_remote
remote = open_remote("s3://{bucket}/team")
sha = remote.put({KEY!r}, {png()!r}, {RECORD!r})
assert remote.held() == {{({KEY!r}, sha)}}, remote.held()
assert remote.images() == {{{KEY!r}: (sha, {len(png())})}}
assert remote.key_object({KEY!r}) == sha
fetched = remote.fetch({KEY!r}, sha)
assert fetched is not None and fetched.record["seed"] == 7
assert remote.probe() is None
lease = remote.lease_acquire(Lease(key={KEY!r}, holder=holder_id(), expires_at=2e9))
assert lease is not None and remote.lease_acquire(lease) is None
assert remote.lease_update(lease, task_id="t-9").task_id == "t-9"
assert remote.lease_update(lease, task_id="t-10") is None  # the version moved on
print("s3fs" in sys.modules, "aiobotocore" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)

    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert sorted(s3_env.keys(bucket)) == [
        f"team/images/{KEY}/{hashlib.sha256(png()).hexdigest()}",
        f"team/leases/{KEY}.json",
    ]


def test_only_fsspec_settings_for_s3_turn_off_the_botocore_only_path(tmp_path: Path) -> None:
    """A gs:// setting (FSSPEC_GS_*) says nothing of S3; FSSPEC_S3 and FSSPEC_S3_* do."""
    from flexforge.remote import plain_s3_environment

    base = {"FSSPEC_CONFIG_DIR": str(tmp_path / "none")}
    assert plain_s3_environment(base)
    assert plain_s3_environment({**base, "FSSPEC_GS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert not plain_s3_environment({**base, "FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert not plain_s3_environment({**base, "FSSPEC_S3": "{}"})
    assert not plain_s3_environment({**base, "FSSPEC_S3A_ANON": "true"})
    (tmp_path / "none").mkdir()
    assert not plain_s3_environment(base)
