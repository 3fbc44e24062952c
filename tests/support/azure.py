"""Azurite, the Azure Storage emulator, for tests: its blob service on loopback, an ephemeral port.

Installed from the npm registry at the version pinned in tests/support/azurite/package-lock.json
(`npm ci --prefix tests/support/azurite`, which .ci/run does). Absent, the Azure tests are skipped
with a loud reason, unless FLEXFORGE_REQUIRE_EMULATORS is set (CI), where they fail.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.spawn import stop

AZURITE = Path(__file__).parent / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one account: a well-known development key, printed in Azure's own documentation.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True, slots=True)
class AzureServer:
    endpoint: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint}/{ACCOUNT};"
        )

    def env(self) -> dict[str, str]:
        """How adlfs finds the emulator: the usual connection-string variable."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def new_container(self) -> str:
        from azure.storage.blob import BlobServiceClient

        name = f"team-{secrets.token_hex(4)}"
        BlobServiceClient.from_connection_string(self.connection_string).create_container(name)
        return name


def azurite_command() -> list[str] | None:
    if not AZURITE.exists() or shutil.which("node") is None:
        return None
    return [str(AZURITE)]


@contextmanager
def running_azurite() -> Iterator[AzureServer]:
    command = azurite_command()
    if command is None:
        message = (
            f"Azurite is not installed ({AZURITE} is missing): "
            "run `npm ci --prefix tests/support/azurite` (node >= 18)"
        )
        if os.environ.get("FLEXFORGE_REQUIRE_EMULATORS"):
            pytest.fail(message)
        pytest.skip(message)
    home = tempfile.mkdtemp(prefix="azurite-")  # its working folder: nothing lands in the checkout
    proc = subprocess.Popen(
        [
            *command,
            *("--blobHost", "127.0.0.1", "--blobPort", "0"),
            # Nothing on disk, no access log, and no telemetry: it would leave loopback.
            *("--inMemoryPersistence", "--silent", "--disableTelemetry"),
            "--skipApiVersionCheck",  # azure-storage-blob may speak a newer API version
            "--disableProductStyleUrl",  # the account is the path's first segment on 127.0.0.1
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=home,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    endpoint = None
    for line in proc.stdout:
        seen.append(line)
        found = re.search(r"listens on (http://127\.0\.0\.1:\d+)", line)
        if found:
            endpoint = found.group(1)
            break
    if endpoint is None:
        proc.kill()
        proc.wait()
        raise RuntimeError("Azurite did not start:\n" + "".join(seen[-20:]))
    # Keep reading what it prints, so that a full pipe never blocks it.
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    try:
        yield AzureServer(endpoint)
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzureServer]:
    with running_azurite() as server:
        yield server


@pytest.fixture
def azure_env(azure_server: AzureServer, monkeypatch: pytest.MonkeyPatch) -> AzureServer:
    for name, value in azure_server.env().items():
        monkeypatch.setenv(name, value)
    return azure_server
