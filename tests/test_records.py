"""The machine key that seals local records: made once, whole, however many makers race."""

from __future__ import annotations

import threading
from pathlib import Path

from flexforge import records


def test_racing_makers_of_the_machine_key_all_read_the_same_whole_key(tmp_path: Path) -> None:
    # Regression: the key was created empty (O_EXCL) and written after, so a second maker (a
    # worker thread writing the journal, another runner on a fresh CI machine) could read it
    # empty and fail the asset with "too short to be flexforge's machine key".
    for attempt in range(30):
        path = tmp_path / str(attempt) / records.KEY_FILE
        got: list[bytes | Exception] = []
        start = threading.Barrier(8)

        def make(
            path: Path = path, got: list[bytes | Exception] = got, start: threading.Barrier = start
        ) -> None:
            start.wait()
            try:
                got.append(records._key_at.__wrapped__(path))
            except Exception as exc:
                got.append(exc)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert [g for g in got if isinstance(g, Exception)] == []
        assert len(set(got)) == 1 and len(got[0]) == 64  # type: ignore[arg-type]
        assert [p.name for p in path.parent.iterdir()] == [records.KEY_FILE]  # no temp file left


def test_the_machine_key_is_private_to_its_user(tmp_path: Path) -> None:
    path = tmp_path / records.KEY_FILE

    records._key_at.__wrapped__(path)

    assert path.stat().st_mode & 0o777 == 0o600
