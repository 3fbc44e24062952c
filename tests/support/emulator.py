"""Helpers for tests that drive real providers against a real emulator over loopback."""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import io
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from flexforge import models
from flexforge.emulator.testing import RunningEmulator, running_emulator
from flexforge.providers import GeneratedImage, JournalEntry
from flexforge.providers._http import FluxHttpProvider, HttpSettings
from flexforge.providers.bfl import BflProvider
from flexforge.providers.cometapi import CometApiProvider
from flexforge.request import ImageRequest, ReferenceInput

T = TypeVar("T")
EmulatorFactory = Callable[..., RunningEmulator]

# Long enough to be redacted, and distinctive enough to find in any text.
SECRET = "sk-test-7f3a9c1e5b2d4f6a8c0e-SECRET"

# Every wait in milliseconds: the suite must stay quick.
FAST = HttpSettings(
    poll_interval=0.01,
    poll_max_interval=0.05,
    retry_base_delay=0.005,
    retry_max_delay=0.05,
    max_retries=4,
    http_timeout=10.0,
    task_timeout=10.0,
    rate_limit_timeout=30.0,
    poll_rate=1000,  # the bound on polls a second is for real APIs; tested in test_polling.py
)


class RecordingTask:
    """A TaskContext that remembers what the provider told it."""

    def __init__(self, resumable: JournalEntry | None = None) -> None:
        self._resumable = resumable
        self.submissions: list[tuple[str, str, float | None]] = []
        self.sending_count = 0
        self.finished = 0
        self.logs: list[str] = []
        self.on_submit: Callable[[], None] | None = None
        self.uncertain: list[str] = []  # submissions that may have been charged
        self.allow_replay = True

    @property
    def resumable(self) -> JournalEntry | None:
        return self._resumable

    def sending(self) -> None:
        self.sending_count += 1

    def submitted(self, task_id: str, polling_url: str, cost_credits: float | None = None) -> None:
        self.submissions.append((task_id, polling_url, cost_credits))
        if self.on_submit is not None:
            self.on_submit()

    def ready(self) -> None:
        pass

    def finished_task(self) -> None:
        self.finished += 1

    def maybe_charged(self, reason: str, *, replay: bool) -> bool:
        self.uncertain.append(reason)
        return self.allow_replay

    def log(self, message: str) -> None:
        self.logs.append(message)


def image_request(**overrides: Any) -> ImageRequest:
    fields: dict[str, Any] = {
        "asset_id": "hero",
        "model": "flux-2-flex",
        "prompt": "A poster for Northwind coffee with the headline 'Brew bold'",
        "width": 128,
        "height": 96,
        "seed": 42,
        "output_format": "png",
        "safety_tolerance": 2,
        "steps": 28,
        "guidance": 4.5,
        "prompt_upsampling": False,
    }
    fields.update(overrides)
    for name in ("steps", "guidance", "prompt_upsampling"):
        if not models.takes(fields["model"], name):  # as the manifest resolves them
            fields[name] = overrides.get(name)
    return ImageRequest(**fields)


def reference(
    tmp_path: Path, name: str, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)
) -> ReferenceInput:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    path = tmp_path / f"{name}.png"
    path.write_bytes(buffer.getvalue())
    return ReferenceInput(label=name, path=path, sha256=hashlib.sha256(buffer.getvalue()).hexdigest())


def bfl(emu: RunningEmulator, key: str | None = None, **settings: Any) -> BflProvider:
    return BflProvider(emu.url, key or emu.key, settings=replace(FAST, **settings))


def comet(emu: RunningEmulator, key: str | None = None, **settings: Any) -> CometApiProvider:
    return CometApiProvider(emu.url, key or emu.key, settings=replace(FAST, **settings))


def generate(
    provider: FluxHttpProvider, request: ImageRequest, task: RecordingTask | None = None
) -> GeneratedImage:
    """One generation on a fresh event loop; the provider is closed afterwards."""
    return run(_generate_and_close(provider, request, task or RecordingTask()))


async def _generate_and_close(
    provider: FluxHttpProvider, request: ImageRequest, task: RecordingTask
) -> GeneratedImage:
    try:
        return await provider.generate(request, task)
    finally:
        await provider.aclose()


@functools.cache
def http() -> httpx.Client:
    """One client for the whole test process: a new client per call costs ~20 ms of TLS setup."""
    client = httpx.Client(timeout=10)
    atexit.register(client.close)
    return client


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """An emulator with fast test settings and a key of its own."""
    with running_emulator(accepted_keys=(SECRET,)) as emu:
        yield emu


@pytest.fixture
def emulator_factory() -> Iterator[EmulatorFactory]:
    """start(**knobs) -> a running emulator, stopped at the end of the test."""
    with ExitStack() as stack:

        def start(**knobs: Any) -> RunningEmulator:
            knobs.setdefault("accepted_keys", (SECRET,))
            return stack.enter_context(running_emulator(**knobs))

        yield start


# The same fast timings for a build in this process or a child, given through the environment.
FAST_ENV = {
    "FLEXFORGE_POLL_INTERVAL": "0.02",
    "FLEXFORGE_POLL_MAX_INTERVAL": "0.1",
    "FLEXFORGE_RETRY_BASE_DELAY": "0.01",
    "FLEXFORGE_RETRY_MAX_DELAY": "0.05",
    "FLEXFORGE_POLL_RATE": "1000",
}


@contextmanager
def serve_builds(monkeypatch: pytest.MonkeyPatch, **knobs: Any) -> Iterator[RunningEmulator]:
    """An emulator that accepts only SECRET, with `flexforge build --provider emulator` (here or
    in a child process) pointed at it with fast timings; SECRET is FLEXFORGE_EMULATOR_KEY (the
    emulator provider never sends BFL_API_KEY)."""
    knobs.setdefault("accepted_keys", (SECRET,))
    with running_emulator(**knobs) as emu:
        env = {**emu.env(), **FAST_ENV, "FLEXFORGE_EMULATOR_KEY": SECRET, "BFL_API_KEY": SECRET}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield emu
