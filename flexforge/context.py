"""Where a command runs: the global options, and the project (manifest, lock, store) they name."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flexforge import gitblobs
from flexforge.errors import UsageError
from flexforge.lockfile import Lock, read_lock
from flexforge.manifest import Manifest, display_path, find_manifest, load_manifest
from flexforge.noop import regular_stamp
from flexforge.paths import lock_path_for, project_cache_dir
from flexforge.providers import DEFAULT_PROVIDER, GENERATORS
from flexforge.settings import PROVIDER_ENV, Settings, effective
from flexforge.sources import Sources
from flexforge.store import STAT_CACHE, Store

if TYPE_CHECKING:
    from flexforge.remote import FsspecRemote

_REMOTE_ENV = "FLEXFORGE_REMOTE"  # flexforge.remote.REMOTE_ENV, without importing it (tests agree)


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
        # Cold (no stat cache: a fresh clone, a CI runner): git's index and the lock are read
        # on a thread while the manifest is parsed, for the digests they vouch for.
        cold = not os.path.exists(os.path.join(project_cache_dir(path.parent), STAT_CACHE))
        gitblobs.configure(path.parent, Path(lock_path_for(str(path))), early=cold)
        return load_manifest(path, display_path(path, self.cwd()))


class Project:
    """A manifest with its lock and store. The lock is read when first used, so that a build
    reads it once, after taking the build lock."""

    def __init__(self, manifest: Manifest, manifest_stamp: list[int] | None = None) -> None:
        self.manifest = manifest
        self.store = Store(manifest.state_dir)
        self.lock_path = Path(lock_path_for(str(manifest.path)))
        self._lock: Lock | None = None
        # The manifest's and the lock's stamps from before they were read: the no-op memo may
        # vouch only for the bytes this command planned with (flexforge.noop).
        self.read_stamps: dict[str, list[int] | None] = {str(manifest.path): manifest_stamp}

    def sources(self) -> Sources:
        """Where bytes for a key can come from with no API call; git history is opened only if
        the cheaper sources come up empty."""
        from flexforge.history import History, default_cache_dir

        manifest = self.manifest
        sources = Sources(
            self.lock,
            self.store,
            lambda: History.open(manifest.root, self.lock_path, default_cache_dir(), self.lock),
        )
        if self.remote is not None:
            from flexforge.remote import RemoteIndex

            sources.remote = RemoteIndex(self.remote, _warn)
        return sources

    @functools.cached_property
    def remote(self) -> FsspecRemote | None:
        """The team remote (`settings: remote:` or $FLEXFORGE_REMOTE), opened once."""
        if self.manifest.settings.remote is None and _REMOTE_ENV not in os.environ:
            return None  # no remote named: spare a plan the import of sockets and fsspec glue
        from flexforge.remote import configured_remote

        return configured_remote(self.manifest.settings.remote)

    @property
    def lock(self) -> Lock:
        if self._lock is None:
            self.read_stamps[str(self.lock_path)] = regular_stamp(str(self.lock_path))
            self._lock = gitblobs.take_lock(self.lock_path) or read_lock(self.lock_path)
        return self._lock


def open_project(opts: GlobalOptions) -> Project:
    stamp = regular_stamp(str(opts.manifest_path()))
    return Project(opts.load_manifest(), stamp)


def choose_provider(flag: str | None, settings: Settings | None = None) -> tuple[str, str]:
    """(provider name, content-key generator): the flag, else $FLEXFORGE_PROVIDER, else the
    manifest's `settings: provider`, else bfl."""
    name = effective(settings or Settings(), provider=flag, default_provider=DEFAULT_PROVIDER).provider
    if name not in GENERATORS:
        raise UsageError(
            f"{PROVIDER_ENV}={name!r} is not a provider; choose one of: {', '.join(sorted(GENERATORS))}"
        )
    return name, GENERATORS[name]


def _warn(message: str) -> None:
    import click

    click.echo(f"warning: {message}", err=True)
