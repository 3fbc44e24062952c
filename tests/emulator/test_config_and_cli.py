"""Knobs from files and flags, and `flexforge emulator` as a user runs it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from flexforge.commands.emulator import build_config
from flexforge.emulator.config import ConfigError, EmulatorConfig, load_config_file, parse_fault
from flexforge.emulator.testing import running_emulator
from tests.support.spawn import run_flexforge, spawn_flexforge


def test_a_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "emulator.yaml"
    path.write_text(
        "port: 9000\nlatency: 2\nmoderate_request: [forbidden]\n"
        "faults: {'submit:429': 0.1, 'poll:500': 0.2}\nscript: [download:expired]\n"
    )

    config = build_config(path, {"latency": 0.5, "fault": ("submit:429=0.3",), "accepted_keys": ()})

    assert config.port == 9000 and config.latency == 0.5
    assert config.moderate_request == ("forbidden",)
    assert config.faults == {"submit:429": 0.3, "poll:500": 0.2}
    assert config.script == ("download:expired",)
    assert config.accepted_keys == ()


def test_json_config_files_work_too(tmp_path: Path) -> None:
    path = tmp_path / "emulator.json"
    path.write_text('{"credits": 12, "accepted_keys": ["a", "b"]}')
    assert load_config_file(path) == {"credits": 12.0, "accepted_keys": ("a", "b")}


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"latencyy": 1}, "unknown knob 'latencyy'"),
        ({"faults": {"submit:418": 0.1}}, "submit faults are 429, 500, 502, 503, 504, drop"),
        ({"faults": {"upload:500": 0.1}}, "phase must be one of"),
        ({"faults": {"poll:500": 1.5}}, "not between 0 and 1"),
        ({"faults": {"poll:500": 0.6, "poll:503": 0.6}}, "add up to 1.2"),
        ({"max_in_flight": 0}, "at least 1"),
        ({"port": "eighty"}, "must be a number"),
        ({"comet_polling_url": "yes"}, "true or false"),
    ],
)
def test_bad_knobs_are_clear_errors(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmulatorConfig().with_knobs(knobs)


def test_parse_fault() -> None:
    assert parse_fault("download:truncate=0.25") == ("download:truncate", 0.25)
    with pytest.raises(ConfigError, match="PHASE:KIND=RATE"):
        parse_fault("submit:429")


def test_the_runner_exposes_env_and_knobs() -> None:
    with running_emulator(accepted_keys=("k1",), latency=3) as emu:
        env = emu.env()
        assert env["FLEXFORGE_EMULATOR_URL"] == emu.url == env["BFL_API_BASE"] == env["COMETAPI_BASE"]
        assert env["BFL_API_KEY"] == env["COMETAPI_KEY"] == env["FLEXFORGE_EMULATOR_KEY"] == "k1"
        assert emu.config.latency == 3
        emu.configure(latency=0.01, url_lifetime=5)
        assert (emu.config.latency, emu.config.url_lifetime) == (0.01, 5)
        assert emu.config.port == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emu.url}/_emulator/stats")  # stopped


def test_the_command_serves_prints_what_to_export_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    process = spawn_flexforge("emulator", "--port", "0", "--latency", "0", "--key", "sekrit", cwd=tmp_path)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(7)]
        banner = "".join(lines)
        exports = dict(
            part.split("=", 1)
            for line in lines
            if line.strip().startswith("export ")
            for part in line.split("#")[0].split()[1:]
        )
        url = exports["FLEXFORGE_EMULATOR_URL"]
        assert exports["BFL_API_BASE"] == url and exports["BFL_API_KEY"] == "sekrit"
        assert exports["FLEXFORGE_EMULATOR_KEY"] == "sekrit"
        assert f"{url}/_emulator/stats" in banner

        answer = httpx.post(f"{url}/v1/flux-2-pro", json={"prompt": "x"}, headers={"x-key": "sekrit"})
        assert answer.status_code == 200
        assert httpx.get(f"{url}/_emulator/stats").json()["submissions"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    assert code == 0, process.stderr.read() if process.stderr else ""


def test_a_busy_port_is_a_usage_error(tmp_path: Path) -> None:
    with running_emulator() as emu:
        port = httpx.URL(emu.url).port
        result = run_flexforge("emulator", "--port", str(port), cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "in use" in result.stderr and "Traceback" not in result.stderr
