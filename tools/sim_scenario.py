"""Scenario files for the fleet simulator: the fleet's shape and a timeline of grid events.

A scenario is TOML, shared by the tests, ``gridedge simulate`` and ``make demo``::

    [fleet]
    meters = 20            # residential meters on one feeder
    line_sensors = 1       # feeder head sensors: they see the sum of the meters plus losses
    pv_share = 0.3         # share of meters with rooftop PV (exporting around noon)
    day_seconds = 240      # one simulated day lasts this long (load curves compress)
    report_interval_s = 2
    sample_interval_ms = 500

    [[event]]
    at = 20                # seconds after the start
    duration = 15
    kind = "sag"           # see KINDS
    devices = ["mtr-003"]  # device ids, or ["*"] for every meter
    value = 190.0          # volts, amps, hertz or a share, by kind

It is loaded with the gateway's own config pipeline (gateway.config.build), so
every problem is reported at once with its key path, and unknown keys are errors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import ConfigError
from gateway.schema import build, choice, rng

# kind -> what ``value`` means
KINDS = {
    "sag": "volts at the meters (under-voltage below 207 V)",
    "swell": "volts at the meters (over-voltage above 253 V)",
    "overcurrent": "amps drawn on the meter's main channel",
    "frequency": "hertz (out of band outside 49.5-50.5)",
    "stuck": "unused: the metering IC repeats its last values",
    "bypass": "share of its real load the tampered meter still measures (theft)",
    "cloud": "share of the sunshine a passing cloud leaves the PV panels (0..1)",
    "link_drop": "unused: the device's link to the gateway is cut",
    "reboot": "unused: power cut; the device restarts after `duration`",
}


@dataclass
class FleetSection:
    meters: int = field(default=20, metadata=rng(0, 500))
    line_sensors: int = field(default=1, metadata=rng(0, 50))
    pv_share: float = field(default=0.3, metadata=rng(0, 1))
    day_seconds: float = field(default=240.0, metadata=rng(10, 86_400))
    start_hour: float = field(default=6.0, metadata=rng(0, 24))
    report_interval_s: int = field(default=2, metadata=rng(1, 3600))
    sample_interval_ms: int = field(default=500, metadata=rng(50, 60_000))
    losses: float = field(default=0.03, metadata=rng(0, 0.5))
    energy_speedup: float = field(default=60.0, metadata=rng(1, 1000))
    site: str = "demo-site"
    feeder: str = "F1"
    seed: int = 1


@dataclass
class Event:
    at: float = field(default=0.0, metadata=rng(0, 10**7))
    duration: float = field(default=10.0, metadata=rng(0, 10**7))
    kind: str = field(default="", metadata={**choice(*KINDS), "required": True})
    devices: list[str] = field(default_factory=lambda: ["*"])
    value: float = 0.0

    def active(self, t: float) -> bool:
        return self.at <= t < self.at + self.duration


@dataclass
class Scenario:
    fleet: FleetSection = field(default_factory=FleetSection)
    event: list[Event] = field(default_factory=list)
    # Set by parse() when a fleet smaller than the file's left events without a device.
    skipped: list[str] = field(default_factory=list)

    def meter_ids(self) -> list[str]:
        return [f"mtr-{i:03d}" for i in range(1, self.fleet.meters + 1)]

    def line_sensor_ids(self) -> list[str]:
        return [f"line-{i:02d}" for i in range(1, self.fleet.line_sensors + 1)]

    def targets(self, ev: Event) -> list[str]:
        if "*" in ev.devices:
            return self.meter_ids()
        return list(ev.devices)


def parse(text: str, source: str = "<scenario>", **overrides: Any) -> Scenario:
    """A Scenario from TOML; ``overrides`` replace [fleet] values (e.g. meters=50)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from e
    raw.setdefault("fleet", {}).update({k: v for k, v in overrides.items() if v is not None})
    problems: list[str] = []
    scenario: Scenario = build(Scenario, raw, "", problems)
    if problems:  # the device checks below need a well-typed fleet
        raise ConfigError(source, problems)
    known = set(scenario.meter_ids()) | set(scenario.line_sensor_ids())
    resized = any(overrides.get(k) is not None for k in ("meters", "line_sensors"))
    kept: list[Event] = []
    for i, ev in enumerate(scenario.event):
        missing = [d for d in ev.devices if d != "*" and d not in known]
        if missing and resized:
            # The fleet was resized on the command line: the scenario scales down by
            # playing each event on the devices this fleet has, and says what it dropped.
            ev.devices = [d for d in ev.devices if d not in missing]
            if not ev.devices:
                scenario.skipped.append(f"event[{i}] ({ev.kind} at {ev.at:g} s): "
                                        f"{', '.join(missing)} not in this fleet")
                continue
        elif missing:
            problems.append(f"event[{i}].devices: no device {missing[0]!r} in this fleet "
                            f"({scenario.fleet.meters} meters, "
                            f"{scenario.fleet.line_sensors} line sensors)")
        if ev.kind == "bypass" and not 0 <= ev.value <= 1:
            problems.append(f"event[{i}].value: a bypass keeps a share 0..1 of the load")
        if ev.kind == "cloud" and not 0 <= ev.value <= 1:
            problems.append(f"event[{i}].value: a cloud leaves a share 0..1 of the sun")
        kept.append(ev)
    scenario.event = kept
    if problems:
        raise ConfigError(source, problems)
    return scenario


def load(path: str | Path, **overrides: Any) -> Scenario:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from e
    return parse(text, str(path), **overrides)
