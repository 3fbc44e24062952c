"""`flexforge emulator`: serve the FLUX.2 API locally until Ctrl-C."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import click

from flexforge.cli import global_options, handle_errors
from flexforge.context import GlobalOptions
from flexforge.emulator.config import ConfigError, EmulatorConfig, load_config_file, parse_fault
from flexforge.errors import EXIT_OK, UsageError


def build_config(config_file: Path | None, flags: dict[str, Any]) -> EmulatorConfig:
    """Defaults, then the file's knobs, then the flags that were given."""
    knobs: dict[str, Any] = load_config_file(config_file) if config_file is not None else {}
    fault_specs = flags.pop("fault", ())
    if fault_specs:
        knobs["faults"] = {**knobs.get("faults", {}), **dict(parse_fault(s) for s in fault_specs)}
    for name, value in flags.items():
        if value is not None and value != ():
            knobs[name] = value
    return EmulatorConfig().with_knobs(knobs)


@click.command("emulator")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8787; 0 picks a free one).")
@click.option("--poll-port", type=int, default=None, help="Serve polling URLs on this port too (0: any).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A YAML/JSON file of knobs (the long option names, with underscores).",
)
@click.option("--latency", type=float, default=None, help="Seconds a task stays Pending (default 1).")
@click.option("--jitter", type=float, default=None, help="Random +- seconds around the latency.")
@click.option("--credits", type=float, default=None, help="Credit balance; 402 when a task costs more.")
@click.option("--max-in-flight", type=int, default=None, help="429 above this many pending tasks (24).")
@click.option("--url-lifetime", type=float, default=None, help="Seconds a download URL is valid (600).")
@click.option("--key", "accepted_keys", multiple=True, help="Accept only this API key (repeatable).")
@click.option(
    "--moderate", "moderate_request", multiple=True, metavar="WORD", help="Prompt word -> Request Moderated."
)
@click.option("--moderate-content", multiple=True, metavar="WORD", help="Prompt word -> Content Moderated.")
@click.option(
    "--fault",
    multiple=True,
    metavar="PHASE:KIND=RATE",
    help="Inject failures, e.g. submit:429=0.1, poll:500=0.05, download:drop=0.02, task:error=0.01. "
    "Kinds: submit 429 500 502 503 504 drop hang; poll 429 500 503 drop hang; download 500 503 "
    "drop hang truncate expired; task error failed unknown.",
)
@click.option(
    "--hang-seconds", type=float, default=None, help="How long a hang fault delays its answer (30)."
)
@click.option(
    "--script", multiple=True, metavar="PHASE:KIND", help="Inject this fault next (in order; 'ok': none)."
)
@click.option("--seed", type=int, default=None, help="Seed of the fault and latency dice.")
@click.option(
    "--submit-fault-task-rate",
    type=click.FloatRange(0, 1),
    default=None,
    help="How often an ambiguous submit fault (500, 502, 504, drop, hang) comes after the task "
    "was created and charged (default 1).",
)
@click.option(
    "--comet-polling-url/--no-comet-polling-url",
    default=None,
    help="Whether CometAPI submit answers carry a polling_url (default: no).",
)
@global_options
@handle_errors
def emulator_command(config_file: Path | None, **flags: Any) -> int:
    """Serve the FLUX.2 HTTP API (BFL and CometAPI flavours) locally, rendering drafts.

    Point builds at it with --provider emulator (it prints the variables to export).
    Stats for tests: GET /_emulator/stats."""
    opts = click.get_current_context().ensure_object(GlobalOptions)
    try:
        config = build_config(config_file, flags)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None

    from flexforge.emulator.server import run  # aiohttp loads only when serving

    try:
        run(config, echo=click.echo, access_log=opts.verbose > 0)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {config.port} on {config.host} is in use: choose --port N (0 picks a free one)"
            ) from None
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    return EXIT_OK
