"""The provider seam: a narrow Protocol and a plain registry of named factories."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from flexforge.errors import UsageError
from flexforge.request import ImageRequest
from flexforge.store import JournalEntry as JournalEntry  # re-exported: providers resume tasks


@dataclass(slots=True)
class GeneratedImage:
    data: bytes
    task_id: str | None = None
    cost_credits: float | None = None  # as reported by the API; 1 credit = US$0.01
    seed: int | None = None  # as reported by the API's result
    prompt: str | None = None  # the prompt the API says it used (rewritten when upsampled)


class TaskContext(Protocol):
    """What the engine lends a provider for one asset."""

    @property
    def resumable(self) -> JournalEntry | None:
        """A task an earlier run submitted for this very key: poll it instead of paying again."""

    def sending(self) -> None:
        """A paid submission is going on the wire: until `submitted`, the API may have created
        (and charged) a task whose id only its answer carries."""

    def submitted(
        self, task_id: str, polling_url: str, cost_credits: float | None = None
    ) -> Awaitable[None] | None:
        """Record a submitted task durably (fsynced) before it is waited on. What it returns, if
        anything, finishes the record (off the event loop): the provider awaits it before polling."""

    def ready(self) -> None:
        """The task is done at the API; what is left (the download) no longer counts against
        the build's tasks in flight. Optional: providers that never call it hold their place."""

    def finished_task(self) -> None:
        """The journaled task is done with (fetched, or failed for good): forget it."""

    def maybe_charged(self, reason: str, *, replay: bool) -> bool:
        """A submission got no answer that says whether it created (and charged) a task: count
        it, worst case, against the run. `replay`: the provider would send it once more; the
        answer says whether it may (the run's budget then reserves that payment too)."""

    def log(self, message: str) -> None:
        """One line for the build log (retries, resubmissions, warnings)."""


class Provider(Protocol):
    name: str
    # What the content key records as the generator: outputs of different generators differ.
    generator: str
    # The most tasks this provider accepts in flight at once.
    max_in_flight: int

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage: ...

    async def aclose(self) -> None: ...


ProviderFactory = Callable[[], Provider]

# name -> "module:factory"; imported only when chosen so that unused providers cost nothing.
PROVIDERS: dict[str, str] = {
    "bfl": "flexforge.providers.bfl:BflProvider.from_env",
    "cometapi": "flexforge.providers.cometapi:CometApiProvider.from_env",
    "draft": "flexforge.providers.draft:DraftProvider",
    "emulator": "flexforge.providers.bfl:BflProvider.for_emulator",
}

# The content key's generator for each provider, known without importing it.
GENERATORS: dict[str, str] = {
    "bfl": "flux",
    "cometapi": "flux",
    "draft": "draft",
    "emulator": "emulator",
}

DEFAULT_PROVIDER = "bfl"


def load_provider(name: str) -> Provider:
    """Build the named provider; a missing key or unknown name is a clear FlexforgeError."""
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise UsageError(
            f"unknown provider {name!r}; choose one of: {', '.join(sorted(PROVIDERS))}"
        ) from None
    module_name, _, attr_path = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    factory: ProviderFactory = obj  # type: ignore[assignment]
    return factory()
