"""Where a command runs: the global options, and the project (manifest, lock, store) they name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flexforge.errors import UsageError
from flexforge.lockfile import Lock, read_lock
from flexforge.manifest import Manifest, display_path, find_manifest, load_manifest
from flexforge.providers import DEFAULT_PROVIDER, GENERATORS
from flexforge.store import Store

PROVIDER_ENV = "FLEXFORGE_PROVIDER"


@dataclass(slots=True)
class GlobalOptions:
    directory: Path | None = None
    file: str | None = None
    verbose: int = 0
    quiet: bool = False
    color: bool = True

    def cwd(self) -> Path:
        if self.directory is None:
            return Path.cwd()
        if not self.directory.is_dir():
            raise UsageError(f"-C {self.directory}: no such directory")
        return self.directory.resolve()

    def manifest_path(self) -> Path:
        return find_manifest(self.file, self.cwd())

    def load_manifest(self) -> Manifest:
        path = self.manifest_path()
        return load_manifest(path, display_path(path, self.cwd()))


@dataclass(slots=True)
class Project:
    manifest: Manifest
    lock: Lock
    store: Store


def open_project(opts: GlobalOptions) -> Project:
    manifest = opts.load_manifest()
    # flexforge.yaml -> flexforge.lock; a second manifest in one folder gets its own lock.
    lock = read_lock(manifest.path.with_suffix(".lock"))
    return Project(manifest, lock, Store(manifest.state_dir))


def choose_provider(flag: str | None) -> tuple[str, str]:
    """(provider name, content-key generator): the flag, else $FLEXFORGE_PROVIDER, else bfl."""
    name = flag or os.environ.get(PROVIDER_ENV) or DEFAULT_PROVIDER
    if name not in GENERATORS:
        raise UsageError(
            f"{PROVIDER_ENV}={name!r} is not a provider; choose one of: {', '.join(sorted(GENERATORS))}"
        )
    return name, GENERATORS[name]
