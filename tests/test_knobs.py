"""flexforge.knobs: every FLEXFORGE_* value is a finite, bounded number of the right kind, or a
one-line usage error naming the variable and the form it wants."""

from __future__ import annotations

import pytest

from flexforge import knobs
from flexforge.errors import UsageError
from flexforge.providers._http import HttpSettings
from tests.helpers import Project

BAD_SECONDS = ["abc", "nan", "NaN", "inf", "-inf", "-1", "1e309", "1e7", "0x10", "5s", "1,5", "\x00"]


@pytest.mark.parametrize("raw", BAD_SECONDS)
def test_a_bad_duration_is_a_usage_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(UsageError) as caught:
        knobs.seconds("FLEXFORGE_X", 300.0, environ={"FLEXFORGE_X": raw})
    message = str(caught.value)
    assert message.startswith("FLEXFORGE_X=") and "expected a number of seconds" in message
    assert "\n" not in message and "\x00" not in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("raw", ["0", "0.0", "-0"])
def test_a_zero_wait_is_refused_where_it_would_spin(raw: str) -> None:
    with pytest.raises(UsageError, match="above 0"):
        knobs.seconds("FLEXFORGE_POLL_INTERVAL", 0.5, positive=True, environ={"FLEXFORGE_POLL_INTERVAL": raw})
    assert knobs.seconds("FLEXFORGE_LOCK_TIMEOUT", 300.0, environ={"FLEXFORGE_LOCK_TIMEOUT": raw}) == 0


@pytest.mark.parametrize(
    ("raw", "value"), [("2.5", 2.5), (" 7 ", 7.0), ("1e3", 1000.0), ("", 300.0), ("  ", 300.0)]
)
def test_good_durations_and_blanks(raw: str, value: float) -> None:
    assert knobs.seconds("FLEXFORGE_X", 300.0, environ={"FLEXFORGE_X": raw}) == value
    assert knobs.seconds("FLEXFORGE_X", 300.0, environ={}) == 300.0


@pytest.mark.parametrize("raw", ["2.5", "-1", "1e3", "abc", "nan", "\u0663", "99999999999999999999", "10001"])
def test_a_bad_count_is_a_usage_error(raw: str) -> None:
    with pytest.raises(UsageError, match=r"FLEXFORGE_MAX_RETRIES=.*expected a whole number from 0 to 10000"):
        knobs.count("FLEXFORGE_MAX_RETRIES", 5, environ={"FLEXFORGE_MAX_RETRIES": raw})


def test_a_long_bad_value_is_clipped_in_the_message() -> None:
    with pytest.raises(UsageError) as caught:
        knobs.seconds("FLEXFORGE_X", 1.0, environ={"FLEXFORGE_X": "x" * 100_000})
    assert len(str(caught.value)) < 200


def test_http_settings_read_every_knob_through_the_checks() -> None:
    settings = HttpSettings.from_env({"FLEXFORGE_MAX_RETRIES": "3", "FLEXFORGE_TASK_TIMEOUT": "60"})
    assert settings.max_retries == 3 and settings.task_timeout == 60.0
    for name in ("POLL_INTERVAL", "POLL_MAX_INTERVAL", "HTTP_TIMEOUT", "TASK_TIMEOUT"):
        with pytest.raises(UsageError, match=f"FLEXFORGE_{name}='0'"):
            HttpSettings.from_env({f"FLEXFORGE_{name}": "0"})
    for name in ("RETRY_BASE_DELAY", "RETRY_MAX_DELAY", "RATE_LIMIT_TIMEOUT", "MAX_RETRIES"):
        HttpSettings.from_env({f"FLEXFORGE_{name}": "0"})  # zero is a meaningful choice here
        with pytest.raises(UsageError, match=f"FLEXFORGE_{name}='nan'"):
            HttpSettings.from_env({f"FLEXFORGE_{name}": "nan"})


def test_a_relative_folder_knob_is_a_usage_error() -> None:
    assert knobs.folder("FLEXFORGE_CACHE_DIR", environ={}) is None
    assert (
        knobs.folder("FLEXFORGE_CACHE_DIR", environ={"FLEXFORGE_CACHE_DIR": "/var/cache/ff"})
        == "/var/cache/ff"
    )
    with pytest.raises(
        UsageError, match="FLEXFORGE_CACHE_DIR='rel/cache' is not valid: expected an absolute"
    ):
        knobs.folder("FLEXFORGE_CACHE_DIR", environ={"FLEXFORGE_CACHE_DIR": "rel/cache"})


@pytest.mark.parametrize("name", ["FLEXFORGE_CACHE_DIR", "FLEXFORGE_DATA_DIR"])
def test_a_bad_folder_knob_stops_every_command_up_front(
    project: Project, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Regression: a relative FLEXFORGE_DATA_DIR failed each asset of a build with its own warning."""
    project.manifest('version: 1\nassets:\n  a: {prompt: "x", seed: 1, width: 64, height: 64}\n')
    monkeypatch.setenv(name, "relative")
    for command in (("build", "--provider", "draft"), ("plan", "--provider", "draft"), ("validate",)):
        result = project.run(*command)
        assert result.exit_code == 2, result.stderr
        assert (
            result.stderr == f"error: {name}='relative' is not valid: expected an absolute path to a folder\n"
        )
