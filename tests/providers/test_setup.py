"""Factories, environment, settings and the adaptive limiter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flexforge.emulator.app import REDACTED
from flexforge.emulator.testing import RunningEmulator
from flexforge.errors import FlexforgeError, UsageError
from flexforge.imaging import verify_image
from flexforge.providers import load_provider
from flexforge.providers._http import FluxHttpProvider, HttpSettings
from flexforge.providers._limiter import AdaptiveLimiter
from flexforge.providers.bfl import BflProvider
from flexforge.providers.cometapi import CometApiProvider
from tests.support.emulator import SECRET, EmulatorFactory, RecordingTask, generate, image_request, run


@pytest.mark.parametrize(
    ("name", "variable"),
    [("bfl", "BFL_API_KEY"), ("cometapi", "COMETAPI_KEY")],
)
def test_a_missing_key_is_one_line_naming_the_variable_and_the_draft_provider(
    name: str, variable: str
) -> None:
    with pytest.raises(FlexforgeError) as info:
        load_provider(name)

    message = str(info.value)
    assert "\n" not in message
    assert variable in message and "--provider draft" in message


def test_a_key_can_come_from_a_file_named_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "bfl-key"
    secret.write_text("sk-from-a-file-0000000000\n")
    monkeypatch.setenv("BFL_API_KEY_FILE", str(secret))
    provider = BflProvider.from_env()
    assert provider.redact("x sk-from-a-file-0000000000 y") == "x *** y"
    run(provider.aclose())

    monkeypatch.setenv("BFL_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(FlexforgeError, match="BFL_API_KEY_FILE names a file that cannot be read"):
        BflProvider.from_env()
    secret.write_text("  \n")
    monkeypatch.setenv("BFL_API_KEY_FILE", str(secret))
    with pytest.raises(FlexforgeError, match="empty"):
        BflProvider.from_env()


def test_from_env_reads_key_and_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "sk-from-env-000000000000")
    monkeypatch.setenv("COMETAPI_KEY", "sk-comet-000000000000000")
    bfl = BflProvider.from_env()
    comet = CometApiProvider.from_env()
    assert (bfl.base_url, bfl.name, bfl.generator, bfl.max_in_flight) == (
        "https://api.bfl.ai",
        "bfl",
        "flux",
        24,
    )
    assert (comet.base_url, comet.name, comet.generator) == ("https://api.cometapi.com", "cometapi", "flux")

    monkeypatch.setenv("BFL_API_BASE", "https://api.eu.bfl.ai/")
    assert BflProvider.from_env().base_url == "https://api.eu.bfl.ai"
    for provider in (bfl, comet):
        run(provider.aclose())


def test_the_emulator_provider_builds_end_to_end_from_the_environment(
    emulator_factory: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Accepting only the dummy key: a real BFL_API_KEY in the environment is never sent.
    emu: RunningEmulator = emulator_factory(accepted_keys=("emulator",))
    monkeypatch.setenv("FLEXFORGE_EMULATOR_URL", emu.url)
    monkeypatch.setenv("BFL_API_KEY", SECRET)
    monkeypatch.setenv("FLEXFORGE_POLL_INTERVAL", "0.01")

    provider = load_provider("emulator")

    assert isinstance(provider, FluxHttpProvider)
    assert (provider.name, provider.generator) == ("emulator", "emulator")
    assert provider.settings.poll_interval == 0.01
    image = generate(provider, image_request(output_format="webp"), RecordingTask())
    verify_image(image.data, 128, 96, "webp")
    (record,) = emu.requests()
    assert record["status"] == 200 and record["headers"]["x-key"] == REDACTED


def test_the_emulator_provider_defaults() -> None:
    provider = BflProvider.for_emulator()
    assert provider.base_url == "http://127.0.0.1:8787"
    run(provider.aclose())


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXFORGE_POLL_INTERVAL", "0.25")
    monkeypatch.setenv("FLEXFORGE_RETRY_BASE_DELAY", "0.1")
    monkeypatch.setenv("FLEXFORGE_MAX_RETRIES", "2")
    settings = HttpSettings.from_env()
    assert (settings.poll_interval, settings.retry_base_delay, settings.max_retries) == (0.25, 0.1, 2)
    assert settings.poll_max_interval == 5.0

    monkeypatch.setenv("FLEXFORGE_MAX_RETRIES", "lots")
    with pytest.raises(UsageError, match="FLEXFORGE_MAX_RETRIES"):
        HttpSettings.from_env()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "abc"])
def test_a_download_deadline_that_is_no_deadline_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLEXFORGE_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(UsageError, match=r"^FLEXFORGE_DOWNLOAD_TIMEOUT") as info:
        HttpSettings.from_env()
    assert "\n" not in str(info.value)


def test_the_limiter_halves_once_per_storm_and_creeps_back() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(24)
        epochs = [await limiter.acquire() for _ in range(10)]
        # Ten requests sent under the same limit all see 429: one halving, not ten.
        assert [limiter.rate_limited(epoch) for epoch in epochs] == [True] + [False] * 9
        assert limiter.limit == 12
        assert limiter.rate_limited(await limiter.acquire())  # a request sent after it: halve again
        assert limiter.limit == 6
        for _ in range(11):
            limiter.release()
        for _ in range(4):
            limiter.succeeded()
        assert limiter.limit == 8
        assert limiter.lowest == 6

    run(scenario())


def test_the_limiter_blocks_above_its_limit_and_survives_cancelled_waiters() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(2)
        await limiter.acquire()
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        cancelled = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        cancelled.cancel()
        limiter.release()
        await asyncio.wait_for(waiter, 1)
        assert limiter.in_use == 2

    run(scenario())


def test_a_provider_reads_the_ca_bundle_once_for_both_of_its_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each httpx client made its own TLS context, reading the CA bundle again (~20 ms of every
    build's start-up). The API pool and the download pool share one, verified as httpx would."""
    import ssl

    loads: list[object] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    provider = BflProvider.for_emulator()
    try:
        assert len(loads) == 1
        assert (
            provider._client._transport._pool._ssl_context
            is provider._downloads._transport._pool._ssl_context
        )  # type: ignore[attr-defined]
        assert provider._client._transport._pool._ssl_context.verify_mode == ssl.CERT_REQUIRED  # type: ignore[attr-defined]
    finally:
        run(provider.aclose())
