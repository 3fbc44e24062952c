"""What the user asked of a plan or build, beyond the manifest (targets and flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexforge.settings import Settings


@dataclass(frozen=True, slots=True)
class PlanOptions:
    targets: frozenset[str] = frozenset()
    replace: frozenset[str] = frozenset()
    reseed: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()  # assets carrying any of these are selected too
    picks: tuple[tuple[str, int], ...] = ()  # (variants asset, candidate) from `flexforge pick`


@dataclass(frozen=True, slots=True)
class BuildOptions:
    jobs: int = 8
    keep_going: bool = False
    max_cost_usd: float | None = None
    max_cost_policy: str = "stop"  # or "refuse": start nothing when the plan is over the limit
    check_credits: bool = True  # ask the balance before the first paid submission


@dataclass(frozen=True, slots=True)
class BuildFlags:
    """The build flags as typed; None where a flag was not given, so that the environment and
    the project's settings can fill them in (see flexforge.settings)."""

    jobs: int | None = None
    keep_going: bool = False
    max_cost_usd: float | None = None
    max_cost_policy: str | None = None
    check_credits: bool = True

    def resolve(self, settings: Settings) -> BuildOptions:
        from flexforge.settings import effective

        chosen = effective(
            settings, jobs=self.jobs, max_cost_usd=self.max_cost_usd, max_cost_policy=self.max_cost_policy
        )
        return BuildOptions(
            chosen.jobs, self.keep_going, chosen.max_cost_usd, chosen.max_cost_policy, self.check_credits
        )
