"""Serving the emulator: binding its socket(s), the start-up banner, and the loop until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from yarl import URL

from flexforge.emulator.app import Emulator, Renderer
from flexforge.emulator.config import EmulatorConfig


class EmulatorServer:
    """The emulator bound to its socket(s), started and stopped from a running event loop."""

    def __init__(
        self, config: EmulatorConfig, *, renderer: Renderer | None = None, access_log: bool = False
    ) -> None:
        self.emulator = Emulator(config, renderer)
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.poll_url = ""  # where polling URLs point, if not the main port

    async def start(self) -> None:
        config = self.emulator.config
        main = _listen(config.host, config.port)
        sockets = [main]
        if config.poll_port is not None:
            try:
                poll = _listen(config.host, config.poll_port)
            except OSError:
                main.close()
                raise
            sockets.append(poll)
            self.emulator.poll_port = poll.getsockname()[1]
        kwargs: dict[str, Any] = {} if self._access_log else {"access_log": None}
        # Stopping must not wait for answers held back by `hang` faults.
        runner = web.AppRunner(self.emulator.app(), handle_signals=False, shutdown_timeout=1.0, **kwargs)
        await runner.setup()
        self._runner = runner
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        self.url = _base_url(config.host, main.getsockname()[1])
        if self.emulator.poll_port is not None:
            self.poll_url = _base_url(config.host, self.emulator.poll_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.emulator.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    # A deep backlog: hundreds of clients may connect in the same instant.
    return socket.create_server((host, port), family=family, backlog=1024)


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return str(URL.build(scheme="http", host=host, port=port))


def client_env(url: str, key: str) -> dict[str, str]:
    """The environment that points flexforge's providers at an emulator serving `url`."""
    return {
        "FLEXFORGE_EMULATOR_URL": url,
        "FLEXFORGE_EMULATOR_KEY": key,
        "BFL_API_BASE": url,
        "BFL_API_KEY": key,
        "COMETAPI_BASE": url,
        "COMETAPI_KEY": key,
    }


def banner(server: EmulatorServer) -> str:
    config = server.emulator.config
    key = config.accepted_keys[0] if config.accepted_keys else "emulator"
    env = client_env(server.url, key)
    faults = ", ".join(f"{name}={rate:g}" for name, rate in sorted(config.faults.items()) if rate) or "none"
    polling = f" (polling on {server.poll_url})" if server.poll_url else ""
    lines = [
        f"flexforge emulator: the FLUX.2 API at {server.url}{polling}",
        f"  latency {config.latency:g}s, at most {config.max_in_flight} tasks in flight, "
        f"{config.credits:g} credits, download URLs valid {config.url_lifetime:g}s, faults: {faults}",
        "Point flexforge at it:",
        f"  export FLEXFORGE_EMULATOR_URL={env['FLEXFORGE_EMULATOR_URL']}"
        + (f" FLEXFORGE_EMULATOR_KEY={key}" if config.accepted_keys else "")
        + "   # then: flexforge build --provider emulator",
        f"  export BFL_API_BASE={env['BFL_API_BASE']} BFL_API_KEY={env['BFL_API_KEY']}",
        f"  export COMETAPI_BASE={env['COMETAPI_BASE']} COMETAPI_KEY={env['COMETAPI_KEY']}",
        f"Stats: curl {server.url}/_emulator/stats   (Ctrl-C stops)",
    ]
    return "\n".join(lines)


async def serve(
    config: EmulatorConfig, *, echo: Callable[[str], None] = print, access_log: bool = False
) -> None:
    """Serve until SIGINT/SIGTERM or cancellation."""
    server = EmulatorServer(config, access_log=access_log)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows, or a side thread
            loop.add_signal_handler(sig, stop.set)
    try:
        echo(banner(server))
        await stop.wait()
    finally:
        await server.stop()


def run(config: EmulatorConfig, *, echo: Callable[[str], None] = print, access_log: bool = False) -> None:
    """Blocking: serve until Ctrl-C, then return normally."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, echo=echo, access_log=access_log))
