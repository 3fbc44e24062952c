"""Credits before spending: the account's balance against what a plan is estimated to cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flexforge.errors import FlexforgeError, ProviderError
from flexforge.pricing import credits_to_usd


@runtime_checkable
class HasCredits(Protocol):
    async def credits(self) -> float | None:
        """The balance in credits, or None when the service has no documented way to say."""


@dataclass(frozen=True, slots=True)
class CreditCheck:
    provider: str
    needed_usd: float  # the plan's estimate (at most --max-cost)
    balance_credits: float | None  # None: the service cannot be asked, or did not answer
    unavailable: str = "no documented endpoint"  # why there is no balance

    @property
    def balance_usd(self) -> float | None:
        return None if self.balance_credits is None else credits_to_usd(self.balance_credits)

    @property
    def enough(self) -> bool | None:
        balance = self.balance_usd
        return None if balance is None else balance + 1e-9 >= self.needed_usd

    def line(self) -> str:
        if self.balance_credits is None:
            return f"Credits: the {self.provider} balance cannot be checked ({self.unavailable})."
        verdict = "enough" if self.enough else "NOT enough"
        return (
            f"Credits: balance {self.balance_credits:g} credits (${self.balance_usd:.2f}) "
            f"on {self.provider}, estimate ${self.needed_usd:.2f}: {verdict}."
        )

    def json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "balance_credits": self.balance_credits,
            "balance_usd": self.balance_usd,
            "estimated_cost_usd": self.needed_usd,
            "enough": self.enough,
        }


async def check(provider: object, name: str, needed_usd: float) -> CreditCheck:
    """Ask `provider` for its balance (one GET) and hold it against `needed_usd`. A refused key
    stops here; a balance the service fails to give is reported as unavailable, and the build
    goes on (a 402 would still stop it)."""
    needed = round(needed_usd, 6)
    try:
        balance = await provider.credits() if isinstance(provider, HasCredits) else None
    except ProviderError as exc:
        if exc.fatal:
            raise
        return CreditCheck(name, needed, None, f"no answer: {exc}")
    return CreditCheck(name, needed, balance)


def refuse_when_short(result: CreditCheck) -> None:
    """Stop before paying anything when the balance cannot cover the estimate."""
    if result.enough is False:
        raise FlexforgeError(
            f"the {result.provider} balance is {result.balance_credits:g} credits "
            f"(${result.balance_usd:.2f}), below this build's estimate of ${result.needed_usd:.2f}; "
            "nothing was submitted. Add credits, or pass --ignore-credits to build until the API "
            "answers 402 (finished assets are kept)"
        )
