"""Finding an image's bytes by sha256 without the API: working tree, object cache, git history.

Every candidate is untrusted (a repository can commit anything at an output path), so bytes are
returned only after their digest matches the one asked for, and reads are bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flexforge.fsutil import sha256_bytes

# Outputs are at most 4 MP; even an uncompressed 4 MP RGBA PNG is 16 MB. Past this, not an output.
MAX_IMAGE_BYTES = 64 * 1024 * 1024

Reader = Callable[[], bytes | None]


class MissingImage(LookupError):
    """No candidate held bytes with this digest."""


class ImageSources:
    def __init__(self, object_dir: Path | None = None) -> None:
        self._readers: dict[str, list[Reader]] = {}
        self._object_dir = object_dir

    def add_file(self, sha256: str, path: Path) -> None:
        self._readers.setdefault(sha256, []).append(lambda: read_bounded(path))

    def add_reader(self, sha256: str, reader: Reader) -> None:
        self._readers.setdefault(sha256, []).append(reader)

    def has(self, sha256: str) -> bool:
        return sha256 in self._readers or self._cached(sha256) is not None

    def _cached(self, sha256: str) -> Path | None:
        if self._object_dir is None:
            return None
        path = self._object_dir / sha256[:2] / sha256
        return path if path.is_file() else None

    def load(self, sha256: str) -> bytes:
        cached = self._cached(sha256)
        readers: list[Reader] = [*self._readers.get(sha256, ())]
        if cached is not None:
            readers.append(lambda: read_bounded(cached))
        for reader in readers:
            data = reader()
            if data is not None and sha256_bytes(data) == sha256:
                return data
        raise MissingImage(sha256)

    def loader(self, sha256: str) -> Callable[[], bytes]:
        return lambda: self.load(sha256)


def read_bounded(path: Path, limit: int = MAX_IMAGE_BYTES) -> bytes | None:
    """The file's bytes, or None when it is missing, not a regular file, or larger than `limit`."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def confined(root: Path, rel: str) -> Path | None:
    """root/rel when it resolves (links followed) inside the root and outside `.git/`; a path
    from a lock or manifest under review may be written to point anywhere."""
    base = root.resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or target == base:
        return None
    if target.relative_to(base).parts[0] == ".git":
        return None
    return target
