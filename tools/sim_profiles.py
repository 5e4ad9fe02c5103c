"""What the simulated metering ICs measure: household load curves, PV, a feeder, events.

Pure logic, no I/O: ``Grid.step(t)`` returns, for every device, the per-channel physical
quantities its emulated ICs should report at scenario time ``t`` (seconds since start).

- A meter (ESP32 board: PZEM-004T on channel 0, ADE7953 A/B on channels 1/2) measures the
  household load on channel 0 (a residential daily curve: night base, morning and evening
  peaks, noise), its rooftop PV inverter on channel 1 (negative power around noon, on a
  share of the houses), and nothing on channel 2.
- A feeder line sensor measures what the feeder carries, signed, on its ADE7953 input A
  (channel 1; the ADE7953 measures both directions, a PZEM-004T cannot): the houses' true
  net load plus the line losses (a share of the flow, whichever way it goes) - import
  when the houses draw, export around noon when their PV exceeds their load. A meter that
  is bypassed (theft: it measures only part of its load) makes the feeder see more than
  the meters report.
- Scenario events change what the ICs see: voltage sag/swell, an over-current, a frequency
  excursion, a stuck IC (the same values again), a bypass, a passing cloud (the PV
  inverters' output falls to a share of the clear sky's for a while). Link drops and reboots are the
  fleet's business (sim_fleet.py).

Compressed time: one scenario ``day_seconds`` is a whole day, so a short demo still shows
the load curve; random draws come from one seeded generator, so a run is repeatable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from tools.sim_scenario import Scenario

NOMINAL_V = 230.0


@dataclass(frozen=True)
class Quantities:
    """One channel's physical state, in SI units; power < 0 means export."""

    voltage: float
    current: float
    power: float
    pf: float = 1.0
    frequency: float = 50.0


@dataclass
class House:
    base_kw: float
    morning_kw: float
    evening_kw: float
    pv_kw: float
    pf: float
    phase_h: float  # this household's habits, shifted against the average


@dataclass
class Grid:
    scenario: Scenario
    houses: dict[str, House] = field(default_factory=dict)
    _last: dict[str, dict[int, Quantities]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fleet = self.scenario.fleet
        self.rng = random.Random(fleet.seed)
        for i, dev in enumerate(self.scenario.meter_ids()):
            with_pv = self.rng.random() < fleet.pv_share or (fleet.pv_share > 0 and i == 0)
            self.houses[dev] = House(
                base_kw=self.rng.uniform(0.15, 0.45), morning_kw=self.rng.uniform(0.8, 2.0),
                evening_kw=self.rng.uniform(1.2, 3.0),
                pv_kw=self.rng.uniform(2.5, 5.0) if with_pv else 0.0,
                pf=self.rng.uniform(0.9, 0.99), phase_h=self.rng.uniform(-1.0, 1.0))

    def hour(self, t: float) -> float:
        fleet = self.scenario.fleet
        return (fleet.start_hour + 24.0 * t / fleet.day_seconds) % 24.0

    @staticmethod
    def load_kw(h: House, hour: float) -> float:
        def bump(center: float, width: float) -> float:
            d = min(abs(hour - center), 24 - abs(hour - center))
            return math.exp(-(d / width) ** 2)

        return h.base_kw + h.morning_kw * bump(7.5 + h.phase_h, 1.2) + \
            h.evening_kw * bump(19.5 + h.phase_h, 2.0)

    @staticmethod
    def pv_output_kw(h: House, hour: float) -> float:
        if not h.pv_kw or not 6.0 < hour < 20.0:
            return 0.0
        return h.pv_kw * math.sin(math.pi * (hour - 6.0) / 14.0) ** 2

    def stuck(self, dev: str, t: float) -> bool:
        return any(ev.kind == "stuck" and ev.active(t) and dev in self.scenario.targets(ev)
                   for ev in self.scenario.event)

    def step(self, t: float) -> dict[str, dict[int, Quantities]]:
        """Every device's channels at scenario time t."""
        hour = self.hour(t)
        active = [ev for ev in self.scenario.event if ev.active(t)]

        def applies(kind: str, dev: str) -> float | None:
            for ev in active:
                if ev.kind == kind and dev in self.scenario.targets(ev):
                    return ev.value
            return None

        true_net_kw = 0.0
        out: dict[str, dict[int, Quantities]] = {}
        freq = 50.0 + 0.02 * math.sin(t / 30.0) + self.rng.gauss(0, 0.004)
        for dev, h in self.houses.items():
            load = max(0.05, self.load_kw(h, hour) * self.rng.uniform(0.93, 1.07))
            pv = self.pv_output_kw(h, hour) * self.rng.uniform(0.97, 1.0)
            cloud = applies("cloud", dev)
            if cloud is not None:
                pv *= cloud
            volts = NOMINAL_V + 1.5 - 0.6 * load + self.rng.gauss(0, 0.3)
            for kind in ("sag", "swell"):
                v = applies(kind, dev)
                if v is not None:
                    volts = v + self.rng.gauss(0, 0.2)
            over = applies("overcurrent", dev)
            if over is not None:  # the house really draws it: the feeder carries it too
                load = over * volts * h.pf / 1000
            true_net_kw += load - pv
            share = applies("bypass", dev)
            measured = load * (share if share is not None else 1.0)
            f = applies("frequency", dev) or freq
            amps = measured * 1000 / (volts * h.pf)
            out[dev] = {
                0: Quantities(volts, amps, measured * 1000, h.pf, f),
                1: Quantities(volts, pv * 1000 / volts, -pv * 1000, 1.0, f),
                2: Quantities(volts, 0.0, 0.0, 1.0, f),
            }
        # The cables heat with the flow either way: losses are drawn at the feeder head on
        # import and taken off the export on its way back.
        feeder_kw = true_net_kw + self.scenario.fleet.losses * abs(true_net_kw)
        for dev in self.scenario.line_sensor_ids():
            volts = NOMINAL_V + 3.0 + self.rng.gauss(0, 0.2)
            pf = 0.95
            out[dev] = {0: Quantities(volts, 0.0, 0.0),
                        1: Quantities(volts, abs(feeder_kw) * 1000 / (volts * pf),
                                      feeder_kw * 1000, pf if feeder_kw >= 0 else -pf, freq),
                        2: Quantities(volts, 0.0, 0.0)}
        for dev in list(out):
            if self.stuck(dev, t) and dev in self._last:
                out[dev] = self._last[dev]  # the IC repeats itself
        self._last = out
        return out
