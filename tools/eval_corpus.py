"""A labelled corpus of generic series for ``make eval``: seeded, with known ground truth.

Each ``Series`` is a run of evenly spaced points of one kind of signal, in its own unit
and scale, with events injected at known places. The kinds are chosen for what breaks
detectors in the field: a steady mains voltage quantised to 0.1 V, a household load with
a daily shape, bursty heavy-tailed power, a PV channel that is exactly 0 all night, a
sparse series that is mostly 0 (a disk-write or a pump counter), and a large and a tiny
scale (10^6 and 10^-3) with the same shapes. The events, each a labelled window
``[start, end)`` in which an alarm counts as a detection:

- ``spike``: one point far off the level (its window allows a few points of delay);
- ``level_shift``: the level moves and stays (a detector should alarm once, early);
- ``drift``: a slow ramp away from the level over many points.

An event's size is set per kind beyond that kind's normal range (a bursty series' events
are larger than its own largest bursts), so every labelled event is an anomaly by any
definition, and every alarm outside them is a false one.

Normal behaviour that must *not* alarm is part of each kind (sunrise on the PV channel,
the evening peak of a load, bursts of a heavy-tailed series). Everything is drawn from
``random.Random(seed)``: the same seed gives the same corpus, so a table can be compared
before and after a change. Pure data; no gridedge code is needed to make it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

KINDS = ("mains_voltage", "household_load", "bursty_power", "pv", "sparse_counter",
         "large_scale", "tiny_scale")
EVENTS = ("spike", "level_shift", "drift")
DAY = 1440  # points per simulated day (one a minute)


@dataclass(frozen=True)
class Label:
    event: str
    start: int  # first point of the event
    end: int  # an alarm before this point detects it


@dataclass
class Series:
    name: str
    kind: str
    period_s: float
    values: list[float]
    labels: list[Label] = field(default_factory=list)

    @property
    def days(self) -> float:
        return len(self.values) * self.period_s / 86400


def _base(kind: str, n: int, rng: random.Random) -> tuple[list[float], float]:
    """The normal signal of a kind and a typical size of its excursions (for events)."""
    out: list[float] = []
    if kind == "mains_voltage":
        for i in range(n):
            slow = 2.0 * math.sin(2 * math.pi * i / DAY)  # the daily voltage swing
            out.append(round(230.0 + slow + rng.gauss(0, 0.4), 1))
        return out, 12.0
    if kind in ("household_load", "large_scale", "tiny_scale"):
        scale = {"household_load": 1.0, "large_scale": 1e6, "tiny_scale": 1e-3}[kind]
        for i in range(n):
            hour = (i % DAY) / 60
            shape = 300 + 700 * math.exp(-((hour - 19) ** 2) / 4) \
                + 400 * math.exp(-((hour - 7.5) ** 2) / 2)  # morning and evening peaks
            out.append(round(scale * (shape + rng.gauss(0, 40)), 6))
        return out, scale * 1500
    if kind == "bursty_power":
        for _ in range(n):
            burst = rng.lognormvariate(0, 1.2) if rng.random() < 0.08 else 0.0
            out.append(round(150 + 40 * rng.random() + 900 * burst, 1))
        # Its bursts reach ~36 kW once in a thousand points (the lognormal's 99.9th
        # percentile): an event must stand out of that, not hide in it.
        return out, 100000.0
    if kind == "pv":
        for i in range(n):
            hour = (i % DAY) / 60
            sun = max(0.0, math.sin(math.pi * (hour - 6) / 13)) if 6 <= hour <= 19 else 0.0
            cloud = 0.35 if rng.random() < 0.04 else 1.0  # a passing cloud
            out.append(round(3000 * sun * cloud + (rng.gauss(0, 15) if sun else 0.0), 1))
            out[-1] = max(0.0, out[-1])
        return out, 2500.0
    if kind == "sparse_counter":
        for _ in range(n):
            out.append(float(rng.choice((4096, 8192, 12288))) if rng.random() < 0.05 else 0.0)
        return out, 200000.0
    raise ValueError(f"unknown kind {kind!r}")


def _inject(values: list[float], event: str, at: int, size: float,
            rng: random.Random) -> Label:
    n = len(values)
    if event == "spike":
        values[at] += size * rng.choice((-1, 1)) if values[at] > size else size
        return Label(event, at, min(n, at + 3))
    if event == "level_shift":
        delta = size * 0.6 * rng.choice((-1, 1)) if values[at] > size else size * 0.6
        for i in range(at, n):
            values[i] += delta
        return Label(event, at, min(n, at + 30))
    if event == "drift":
        length = 240
        for i in range(at, n):
            values[i] += size * 0.8 * min(1.0, (i - at) / length)
        return Label(event, at, min(n, at + length + 60))
    raise ValueError(f"unknown event {event!r}")


def make_series(kind: str, seed: int, days: float = 3.0, events: int = 3) -> Series:
    """One series of a kind, ``days`` long, with ``events`` events in its second half and
    later (the first day is left normal: detectors warm up there)."""
    rng = random.Random(f"{kind}:{seed}")
    n = int(days * DAY)
    values, size = _base(kind, n, rng)
    labels: list[Label] = []
    slots = sorted(rng.sample(range(DAY + 60, n - 400, 400), events))
    for at in slots:
        labels.append(_inject(values, rng.choice(EVENTS), at, size, rng))
    return Series(f"{kind}-{seed}", kind, 60.0, values, labels)


def corpus(seeds: range, days: float = 3.0) -> list[Series]:
    """Every kind for every seed."""
    return [make_series(kind, seed, days) for seed in seeds for kind in KINDS]
