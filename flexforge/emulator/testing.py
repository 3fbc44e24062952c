"""Run an emulator inside a test process: its own thread and event loop, a free port.

from flexforge.emulator.testing import running_emulator

with running_emulator(latency=0.05, faults={"submit:429": 0.2}) as emu:
    for name, value in emu.env().items():  # FLEXFORGE_EMULATOR_URL, BFL_API_BASE/KEY, ...
        monkeypatch.setenv(name, value)
    ...  # build with --provider emulator, or use emu.url with any HTTP client
    assert emu.stats()["duplicates"] == 0
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flexforge.emulator.app import Renderer
from flexforge.emulator.config import EmulatorConfig
from flexforge.emulator.server import EmulatorServer, client_env

T = TypeVar("T")

# Tests want speed, and a port no other test (or xdist worker) holds.
TEST_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "latency": 0.05, "seed": 0}
TEST_KEY = "test-key"


class RunningEmulator:
    """A handle on an emulator serving from a background thread."""

    def __init__(self, server: EmulatorServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:54321 (BFL routes under /v1, CometAPI /flux/v1)."""
        return self._server.url

    @property
    def config(self) -> EmulatorConfig:
        return self._server.emulator.config

    @property
    def key(self) -> str:
        """A key the emulator accepts."""
        keys = self.config.accepted_keys
        return keys[0] if keys else TEST_KEY

    def env(self) -> dict[str, str]:
        """FLEXFORGE_EMULATOR_URL, BFL_API_BASE/KEY and COMETAPI_BASE/KEY pointing here."""
        return client_env(self.url, self.key)

    def stats(self) -> dict[str, Any]:
        """The same document as GET /_emulator/stats."""
        state = self._server.emulator.state
        return self._call(lambda: state.snapshot(time.monotonic()))

    def requests(self) -> list[dict[str, Any]]:
        """Every submission received (method, path, headers, parsed body, status), oldest first."""
        state = self._server.emulator.state
        return self._call(lambda: [dict(record) for record in state.captured])

    def reset(self) -> None:
        """Forget all tasks and counters (a client's old task ids become `Task not found`)."""
        self._call(self._server.emulator.reset)

    def configure(self, **knobs: Any) -> None:
        """Change knobs (EmulatorConfig field names) while serving; host, ports and cluster stay."""
        emulator = self._server.emulator
        self._call(lambda: emulator.configure(emulator.config.with_knobs(knobs)))

    def _call(self, func: Callable[[], T]) -> T:
        async def in_loop() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(in_loop(), self._loop).result(timeout=10)


@contextmanager
def running_emulator(
    config: EmulatorConfig | None = None,
    *,
    renderer: Renderer | None = None,
    **knobs: Any,
) -> Iterator[RunningEmulator]:
    """Serve an emulator on 127.0.0.1 (a free port) for the duration of the `with` block.

    `knobs` are EmulatorConfig fields, applied over `config` (default: fast test settings:
    port 0, latency 0.05 s, fault seed 0). `renderer` replaces flexforge.draft.render."""
    base = config if config is not None else EmulatorConfig(**TEST_DEFAULTS)
    server = EmulatorServer(base.with_knobs(knobs), renderer=renderer)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="flexforge-emulator", daemon=True)
    thread.start()
    try:
        _run(loop, server.start())
        try:
            yield RunningEmulator(server, loop)
        finally:
            _run(loop, server.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
