"""Project settings: the build defaults a team commits in the manifest's `settings:` block, which
the environment and then command-line flags override.

One typed record, read once with the manifest; other features (a remote store, the CI action)
add their fields here so that every default a project can commit lives in one place.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from flexforge.errors import UsageError

PROVIDER_ENV = "FLEXFORGE_PROVIDER"
JOBS_ENV = "FLEXFORGE_JOBS"
MAX_COST_ENV = "FLEXFORGE_MAX_COST"
DEFAULT_JOBS = 8
# `stop`: never start a task that could take the run over the limit (a partial build is kept);
# `refuse`: start nothing when the plan's estimate is over it (all or nothing, for budget owners).
MAX_COST_POLICIES = ("stop", "refuse")


@dataclass(frozen=True, slots=True)
class RemoteSetting:
    """`settings: remote:` (see flexforge.remote)."""

    url: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    """What the manifest's `settings:` block says; None where it says nothing."""

    provider: str | None = None
    jobs: int | None = None
    max_cost_usd: float | None = None
    max_cost_policy: str | None = None
    remote: RemoteSetting | None = None
    # Write every `variants:` candidate under this folder (ID/K.ext) so a team can commit them;
    # None: candidates stay in the cache (and the team remote), recorded in the lock.
    variants_dir: str | None = None

    @classmethod
    def from_data(cls, data: Any) -> Settings:
        """From the block as the schema accepted it (anything else is ignored, not trusted)."""
        if not isinstance(data, dict):
            return cls()
        provider, jobs, limit, policy = (
            data.get(k) for k in ("provider", "jobs", "max_cost_usd", "max_cost_policy")
        )
        return cls(
            provider=provider if isinstance(provider, str) else None,
            jobs=jobs if isinstance(jobs, int) and not isinstance(jobs, bool) else None,
            max_cost_usd=float(limit)
            if isinstance(limit, int | float) and not isinstance(limit, bool)
            else None,
            max_cost_policy=policy if policy in MAX_COST_POLICIES else None,
            remote=_remote(data.get("remote")),
            variants_dir=data["variants_dir"] if isinstance(data.get("variants_dir"), str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Effective:
    """A setting's value after flags and environment, and where it came from (for messages)."""

    provider: str
    provider_by_default: bool  # neither flag nor environment chose it
    jobs: int
    max_cost_usd: float | None
    max_cost_policy: str


def effective(
    settings: Settings,
    *,
    provider: str | None = None,
    jobs: int | None = None,
    max_cost_usd: float | None = None,
    max_cost_policy: str | None = None,
    default_provider: str = "bfl",
) -> Effective:
    """Flag, else environment, else the project's setting, else flexforge's default."""
    chosen = provider or os.environ.get(PROVIDER_ENV) or None
    return Effective(
        provider=chosen or settings.provider or default_provider,
        provider_by_default=chosen is None,
        jobs=jobs or _env_number(JOBS_ENV, int, minimum=1) or settings.jobs or DEFAULT_JOBS,
        max_cost_usd=_budget(
            settings.max_cost_usd, max_cost_usd, _env_number(MAX_COST_ENV, float, minimum=0)
        ),
        max_cost_policy=max_cost_policy or settings.max_cost_policy or "stop",
    )


def _remote(data: Any) -> RemoteSetting | None:
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    return RemoteSetting(data["url"], data.get("read_only") is True)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _budget(committed: float | None, flag: float | None, env: float | None) -> float | None:
    """The run's limit: the project's committed budget is a ceiling that the flag (else the
    environment) may lower, never raise: whoever owns the budget owns the manifest."""
    asked = _first(flag, env)
    if committed is None or asked is None:
        return _first(asked, committed)
    if asked > committed + 1e-9:
        where = f"--max-cost {asked:g}" if flag is not None else f"{MAX_COST_ENV}={asked:g}"
        raise UsageError(
            f"{where} is over the project's budget ${committed:.2f} (settings: max_cost_usd in the "
            "manifest); a flag can only lower it: change the committed budget to raise it"
        )
    return asked


def _env_number(name: str, kind: type[int] | type[float], *, minimum: float) -> Any:
    from flexforge import knobs

    return knobs.number(name, kind, minimum=minimum)
