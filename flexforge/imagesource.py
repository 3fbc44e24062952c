"""Finding an image's bytes by sha256 without the API: working tree, object cache, git history.

Every candidate is untrusted (a repository can commit anything at an output path, or a link
there), so bytes are returned only after their digest matches the one asked for, working-tree
reads stay inside the project and out of `.git/` and the state folder, follow no final link, and
are bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flexforge.confine import Resolver, private_part
from flexforge.fsutil import read_regular, sha256_bytes
from flexforge.store import Store

# Outputs are at most 4 MP; even an uncompressed 4 MP RGBA PNG is 16 MB. Past this, not an output.
MAX_IMAGE_BYTES = 64 * 1024 * 1024

Reader = Callable[[], bytes | None]


class MissingImage(LookupError):
    """No candidate held bytes with this digest."""


class ImageSources:
    def __init__(self, store: Store | None = None) -> None:
        self._readers: dict[str, list[Reader]] = {}
        self._fallbacks: dict[str, list[Reader]] = {}  # tried after the object cache
        self._store = store

    def add_file(self, sha256: str, path: Path) -> None:
        self._readers.setdefault(sha256, []).append(lambda: read_bounded(path))

    def add_reader(self, sha256: str, reader: Reader) -> None:
        self._readers.setdefault(sha256, []).append(reader)

    def add_fallback(self, sha256: str, reader: Reader) -> None:
        """A costlier reader, tried only when the others and the object cache have nothing."""
        self._fallbacks.setdefault(sha256, []).append(reader)

    def has(self, sha256: str) -> bool:
        return sha256 in self._readers or (self._store is not None and self._store.has_object(sha256))

    def load(self, sha256: str) -> bytes:
        readers: list[Reader] = [*self._readers.get(sha256, ())]
        if self._store is not None:
            store = self._store
            readers.append(lambda: store.read_object(sha256))
        readers += self._fallbacks.get(sha256, ())
        for reader in readers:
            data = reader()
            if data is not None and sha256_bytes(data) == sha256:
                return data
        raise MissingImage(sha256)

    def loader(self, sha256: str) -> Callable[[], bytes]:
        return lambda: self.load(sha256)


def read_bounded(path: Path, limit: int = MAX_IMAGE_BYTES) -> bytes | None:
    """The plain file's bytes, or None when it is missing, a link, not a regular file, or larger
    than `limit`."""
    try:
        return read_regular(path, limit)
    except OSError:
        return None


def confined(resolver: Resolver, rel: str) -> Path | None:
    """The working-tree file at project-relative `rel` when it leads (links followed) inside the
    project and outside `.git/` and the state folder; a path from a lock or manifest under review
    may be written to point anywhere."""
    real = resolver.inside(rel)
    if real is None or real in ("", ".") or private_part(rel) or private_part(real):
        return None
    return resolver.root / real
