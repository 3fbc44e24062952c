"""Black Forest Labs' own API, and the same client pointed at a local `flexforge emulator`."""

from __future__ import annotations

import os

from flexforge.providers._http import Dialect, FluxHttpProvider, HttpSettings, key_from_env

DEFAULT_BASE = "https://api.bfl.ai"
DEFAULT_EMULATOR_URL = "http://127.0.0.1:8787"
KEY_ENV = "BFL_API_KEY"
# The emulator provider never sends BFL_API_KEY (an emulator may be anyone's, and records what it
# gets): it sends this variable's value, for an emulator started with --key, else a dummy key.
EMULATOR_KEY_ENV = "FLEXFORGE_EMULATOR_KEY"
EMULATOR_DUMMY_KEY = "emulator"

# Polling URLs name a cluster (https://api.eu2.bfl.ai/...): anywhere under bfl.ai over https.
BFL = Dialect(
    service="BFL",
    key_env=KEY_ENV,
    route_prefix="/v1",
    bearer=False,
    domains=("bfl.ai",),
    credits_path="/v1/credits",
)
EMULATOR = Dialect(
    service="the emulator",
    key_env=EMULATOR_KEY_ENV,
    route_prefix="/v1",
    bearer=False,
    credits_path="/v1/credits",
)


class BflProvider(FluxHttpProvider):
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        emulated: bool = False,
        max_in_flight: int = 24,
        settings: HttpSettings | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            dialect=EMULATOR if emulated else BFL,
            name="emulator" if emulated else "bfl",
            generator="emulator" if emulated else "flux",
            max_in_flight=max_in_flight,
            settings=settings,
        )

    @classmethod
    def from_env(cls) -> BflProvider:
        key = key_from_env(KEY_ENV, "BFL API key")
        return cls(os.environ.get("BFL_API_BASE", "").strip() or DEFAULT_BASE, key)

    @classmethod
    def for_emulator(cls) -> BflProvider:
        base = os.environ.get("FLEXFORGE_EMULATOR_URL", "").strip() or DEFAULT_EMULATOR_URL
        key = os.environ.get(EMULATOR_KEY_ENV, "").strip() or EMULATOR_DUMMY_KEY
        return cls(base, key, emulated=True)
