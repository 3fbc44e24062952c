"""Where flexforge keeps its files: the project's state folder, the per-project cache, the machine key.

Standard library only: the no-op path imports this before anything else.

A repository is untrusted input (docs/security.md), so nothing flexforge derives and then trusts
without checking lives in it: the validated-manifest cache, the no-op memo and the stat cache go
to the user's cache folder, one subfolder per project keyed by the project's real path. Records
that must stay with the project (journal, key records, seeds, ledger) stay in `.flexforge/`,
authenticated with a key that never leaves this machine (see `flexforge.records`).
"""

from __future__ import annotations

import os
import sys

from flexforge import knobs

TYPE_CHECKING = False  # typing costs the no-op path an import (mypy reads this as True)
if TYPE_CHECKING:  # pathlib costs the no-op path an import it otherwise never makes
    from pathlib import Path

try:  # the built-in sha256: hashlib would load OpenSSL, a few ms of every no-op build
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a Python built without it (3.12 names it _sha2)
    from hashlib import sha256 as _sha256

APP = "flexforge"
STATE_DIR = ".flexforge"
MANIFEST_NAME = "flexforge.yaml"
CACHE_DIR_ENV = "FLEXFORGE_CACHE_DIR"
DATA_DIR_ENV = "FLEXFORGE_DATA_DIR"


def lock_path_for(manifest: str) -> str:
    """flexforge.yaml -> flexforge.lock; a second manifest in one folder gets its own lock."""
    return os.path.splitext(manifest)[0] + ".lock"


def _xdg(variable: str, fallback: str) -> str:
    value = os.environ.get(variable, "").strip()
    # The XDG spec ignores relative values; so does platformdirs.
    return value if os.path.isabs(value) else os.path.expanduser(fallback)


def user_cache_root() -> str:
    """flexforge's folder in the user's cache: $FLEXFORGE_CACHE_DIR, else platformdirs' choice."""
    override = knobs.folder(CACHE_DIR_ENV)
    if override is not None:
        return override
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        # platformdirs' own rule on these systems, spelled out: importing it costs a no-op build
        # about a third of its time. tests/test_paths.py pins the two together.
        return os.path.join(_xdg("XDG_CACHE_HOME", "~/.cache"), APP)
    import platformdirs

    return platformdirs.user_cache_dir(APP, appauthor=False)


def user_data_root() -> str:
    """flexforge's folder in the user's data: $FLEXFORGE_DATA_DIR, else platformdirs' choice.
    Holds the machine key; unlike the cache, losing it makes this machine's records untrusted."""
    override = knobs.folder(DATA_DIR_ENV)
    if override is not None:
        return override
    import platformdirs

    return platformdirs.user_data_dir(APP, appauthor=False)


def project_cache_dir(root: str | Path) -> str:
    """The cache folder of the project whose root is `root`, by its real path: two checkouts
    never share derived state, and a project reached through a link is still one project."""
    real = os.path.realpath(root)
    digest = _sha256(os.fsencode(real)).hexdigest()[:32]
    return os.path.join(user_cache_root(), "projects", digest)


def manifest_cache_file(manifest: str | Path, kind: str) -> str:
    """A derived cache of one manifest (`kind`: "manifest", "noop", ...) in its project's cache."""
    folder, name = os.path.split(manifest)
    return os.path.join(project_cache_dir(folder), f"{name}.{kind}.json")
