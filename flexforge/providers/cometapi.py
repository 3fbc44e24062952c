"""CometAPI, a reseller serving the same FLUX.2 models under /flux/v1 with Bearer auth."""

from __future__ import annotations

import os

from flexforge.providers._http import Dialect, FluxHttpProvider, HttpSettings, key_from_env

DEFAULT_BASE = "https://api.cometapi.com"
KEY_ENV = "COMETAPI_KEY"

# Every CometAPI example polls its own /flux/v1/get_result, never a polling_url (which may name a
# BFL host). Its docs give no balance endpoint for the FLUX API: the credit check says so.
COMETAPI = Dialect(
    service="CometAPI", key_env=KEY_ENV, route_prefix="/flux/v1", bearer=True, own_results=True
)


class CometApiProvider(FluxHttpProvider):
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_in_flight: int = 24,
        settings: HttpSettings | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            dialect=COMETAPI,
            name="cometapi",
            generator="flux",  # the same models as BFL: switching does not regenerate
            max_in_flight=max_in_flight,
            settings=settings,
        )

    @classmethod
    def from_env(cls) -> CometApiProvider:
        key = key_from_env(KEY_ENV, "CometAPI key")
        return cls(os.environ.get("COMETAPI_BASE", "").strip() or DEFAULT_BASE, key)
