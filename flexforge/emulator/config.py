"""The emulator's knobs: one dataclass, filled from defaults, a YAML/JSON file, then CLI flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Faults are named "phase:kind". On submit, 429 and 503 (with Retry-After, saying no task was
# made) never create a task; 500, 502, 504, `drop` (the connection closes with no answer) and
# `hang` (the answer comes after hang_seconds, past a client's timeout) are ambiguous, as on the
# real API: each first creates and charges the task with probability submit_fault_task_rate.
# A download `expired` answers as an expired URL would.
SUBMIT_AMBIGUOUS = ("500", "502", "504", "drop", "hang")
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "submit": ("429", "500", "502", "503", "504", "drop", "hang"),
    "poll": ("429", "500", "503", "drop", "hang"),
    "download": ("500", "503", "drop", "hang", "truncate", "expired"),
    # the task ends with status Error / Failed instead of Ready, or one no client knows
    "task": ("error", "failed", "unknown"),
}
NO_FAULT = "ok"  # a script entry that lets one request through


class ConfigError(ValueError):
    """A knob has a value the emulator cannot use."""


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8787  # 0 picks a free port
    # Serve polling URLs on a port of their own too (0 picks one); None: the main port.
    poll_port: int | None = None
    # The path prefix of polling URLs, like the cluster in BFL's https://api.eu2.bfl.ai/...
    cluster: str = "cluster-eu2"
    latency: float = 1.0  # seconds a task stays Pending
    jitter: float = 0.0  # +- seconds around latency
    credits: float = 100_000.0  # the balance; 402 when a task costs more
    max_in_flight: int = 24  # 429 above this many Pending tasks
    url_lifetime: float = 600.0  # seconds a signed download URL stays valid
    accepted_keys: tuple[str, ...] = ()  # empty: any non-empty key
    moderate_request: tuple[str, ...] = ()  # prompt words -> "Request Moderated"
    moderate_content: tuple[str, ...] = ()  # prompt words -> "Content Moderated"
    faults: Mapping[str, float] = field(default_factory=dict)  # "phase:kind" -> probability
    script: tuple[str, ...] = ()  # "phase:kind" faults injected first, in order, per phase
    hang_seconds: float = 30.0  # how long a `hang` fault holds its answer
    # How often an ambiguous submit fault (500, 502, 504, drop, hang) comes after the task was
    # created and charged; the rest come before, and no task exists.
    submit_fault_task_rate: float = 1.0
    # Retry-After (seconds) on every poll answer, as the live API sends `Retry-After: 1`; None: none.
    poll_retry_after: float | None = None
    seed: int | None = None  # seeds the fault and latency RNG; None: unpredictable
    comet_polling_url: bool = False  # CometAPI submit answers may carry polling_url, or not
    # A base URL (e.g. https://api.eu2.bfl.ai) whose get_result CometAPI answers name as their
    # polling_url, as a reseller passing its upstream's answer through would; "": its own.
    comet_upstream_url: str = ""
    capture_limit: int = 1000  # submissions kept for GET /_emulator/requests

    def __post_init__(self) -> None:
        _check_range("port", self.port, 0, 65535)
        if self.poll_port is not None:
            _check_range("poll_port", self.poll_port, 0, 65535)
        for name in ("latency", "jitter", "credits", "url_lifetime", "hang_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1")
        if not self.cluster.strip("/") or "/" in self.cluster.strip("/"):
            raise ConfigError(f"cluster must be one path segment, got {self.cluster!r}")
        if not 0.0 <= self.submit_fault_task_rate <= 1.0:
            raise ConfigError(f"submit_fault_task_rate {self.submit_fault_task_rate} is not between 0 and 1")
        for name, rate in self.faults.items():
            _check_fault(name)
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"fault {name}: rate {rate} is not between 0 and 1")
        for phase in FAULT_KINDS:
            total = sum(r for n, r in self.faults.items() if n.startswith(f"{phase}:"))
            if total > 1.0 + 1e-9:
                raise ConfigError(f"{phase} fault rates add up to {total:g}, more than 1")
        for name in self.script:
            _check_fault(name, allow_ok=True)

    def with_knobs(self, knobs: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `knobs` (field names) changed; unknown names are an error."""
        return dataclasses.replace(self, **_coerce(knobs))


def load_config_file(path: Path) -> dict[str, Any]:
    """Knobs from a YAML or JSON file (JSON is YAML)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of knobs")
    try:
        return _coerce(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_fault(spec: str) -> tuple[str, float]:
    """'submit:429=0.1' -> ('submit:429', 0.1)."""
    name, sep, rate = spec.partition("=")
    if not sep:
        raise ConfigError(f"fault {spec!r}: expected PHASE:KIND=RATE, e.g. submit:429=0.1")
    _check_fault(name.strip())
    try:
        return name.strip(), float(rate)
    except ValueError:
        raise ConfigError(f"fault {spec!r}: {rate!r} is not a number") from None


_FIELDS = {f.name: f for f in dataclasses.fields(EmulatorConfig)}
_TUPLES = ("accepted_keys", "moderate_request", "moderate_content", "script")


def _coerce(knobs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in knobs.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown knob {name!r}; known: {', '.join(sorted(_FIELDS))}")
        if name in _TUPLES:
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{name} must be a list")
            value = tuple(str(v) for v in value)
        elif name == "faults":
            if not isinstance(value, Mapping):
                raise ConfigError("faults must map 'phase:kind' to a rate")
            try:
                value = {str(k): float(v) for k, v in value.items()}
            except (TypeError, ValueError):
                raise ConfigError("faults: every rate must be a number") from None
        elif value is not None or _FIELDS[name].type not in ("int | None", "float | None"):
            value = _scalar(name, value)
        out[name] = value
    return out


_KINDS: dict[str, type] = {"int": int, "float": float, "bool": bool}


def _scalar(name: str, value: Any) -> Any:
    kind = _KINDS.get(str(_FIELDS[name].type).removesuffix(" | None"))
    if kind is None:
        return str(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _check_fault(name: str, *, allow_ok: bool = False) -> None:
    phase, _, kind = name.partition(":")
    kinds = FAULT_KINDS.get(phase)
    if kinds is None:
        raise ConfigError(f"fault {name!r}: phase must be one of {', '.join(FAULT_KINDS)}")
    if kind not in kinds and not (allow_ok and kind == NO_FAULT):
        raise ConfigError(f"fault {name!r}: {phase} faults are {', '.join(kinds)}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
