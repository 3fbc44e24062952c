"""What the user asked of a plan or build, beyond the manifest (targets and flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlanOptions:
    targets: frozenset[str] = frozenset()
    replace: frozenset[str] = frozenset()
    reseed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BuildOptions:
    jobs: int = 8
    keep_going: bool = False
    max_cost_usd: float | None = None
    check_credits: bool = True  # ask the balance before the first paid submission
