"""``make eval``, the whole edge pipeline: simulated feeders through ``gateway.checks``.

Each run is one feeder of the fleet simulator (tools/sim_profiles.py: household load
curves, rooftop PV on 30 % of the houses, passing clouds, one signed line sensor). Every
device's reading of each reporting period (``PERIOD_S``) becomes the gateway's own
``Frame`` and goes through ``EdgeChecks.observe``, and ``tick`` runs between periods, in
simulated time, with the shipped [checks] defaults plus one setting a utility gives every
installation: the main fuse (``max_current`` 63 A). As in eval_balance.py, every meter
carries the errors of its accuracy class.

Labelled events (``Truth``), each with the alarm kinds that detect it and its targets (a
device, or the feeder and all its meters):

- ``sag`` / ``swell``: 1-3 meters at 195 V / 258 V for 30 min: ``under_voltage`` /
  ``over_voltage``;
- ``overcurrent``: one meter draws 80 A for 20 min: ``over_current``;
- ``stuck``: one meter's IC repeats its values for 4 h: ``stuck_value`` (its energy is
  wrong meanwhile: a ``non_technical_loss`` is about it too);
- ``theft``: one meter bypassed, 5 % of the feeder's throughput unmetered from then on
  (eval_balance.py measures 5-20 % over many runs): ``non_technical_loss``;
- ``dropout``: one meter's Wi-Fi gone for 1 h, its ring buffer delivered on return:
  ``offline``, and it is classified right only if no ``outage`` is raised;
- ``outage``: the feeder's supply cut for 1 h (every meter and the line sensor silent,
  the meters reboot): ``outage``, right only if no meter of it raises ``offline``.

A theft's alarm names the thief if its first suspect is the bypassed meter.

Sunrise, the load's daily peaks and passing clouds are normal life: an alarm about them
is false. An alarm is *explained* if it concerns an event's target between the event's
start and a slack after its end (a sag's ``anomaly`` too: it is about something real); an
alarm no event explains is false. A *quiet week* has clouds and nothing else. Reported
per event type: recall (an expected kind raised), classification, median and longest
delay (s), and
per alarm kind: alarms, false alarms per device-day. Pure logic over the simulator.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from gateway.alarm import Alarm
from gateway.checks import EdgeChecks
from gateway.config import ChecksSection, Limits, Override
from gateway.devices import Device
from gateway.protocol import Channel, Frame, Stat
from tools.sim_profiles import Grid, Quantities
from tools.sim_scenario import parse

DAY_S = 86_400.0
PERIOD_S = 300  # a meter's reporting period here (the shipped firmware's default is 10 s)
T0_MS = 1_789_948_800_000  # the simulated clock's start: Monday 2026-09-21, 00:00 UTC
SUMMARIES = frozenset({"voltage_mean", "voltage_week"})  # periodic records, not alarms
EXPECTS = {"sag": {"under_voltage"}, "swell": {"over_voltage"},
           "overcurrent": {"over_current"}, "stuck": {"stuck_value"},
           "theft": {"non_technical_loss"}, "dropout": {"offline"}, "outage": {"outage"}}
WRONG = {"dropout": {"outage"}, "outage": {"offline"}}  # a misclassification


@dataclass(frozen=True)
class Truth:
    event: str
    device: str  # the (first) device it happens to; the thief of a theft
    targets: frozenset[str]  # device ids, and the feeder's name for feeder-wide events
    start: float  # simulated seconds
    end: float
    slack: float  # an alarm this long after the end is still about the event


@dataclass
class Run:
    seed: int
    meters: int
    days: float
    truths: list[Truth] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)


def config(meters: int) -> ChecksSection:
    """The shipped [checks] with the installation's fuses set (over_current is off until
    an operator sets ``max_current``): 63 A a house, and the feeder head's sized at 20 A a
    house (the simulated houses peak together: little diversity)."""
    return ChecksSection(limits=Limits(max_current=63.0), override=[
        Override(device="line-01", limits=Limits(max_current=20.0 * meters))])


def _clouds(rng: random.Random, days: float) -> list[str]:
    """Passing clouds over the whole feeder on daylight hours: 0-6 a day, 5-40 min each."""
    out = []
    for day in range(int(days + 0.999)):
        for _ in range(rng.randrange(7)):
            at = day * DAY_S + rng.uniform(8, 17) * 3600
            out.append(f'[[event]]\nat = {at:.0f}\nduration = {rng.uniform(300, 2400):.0f}\n'
                       f'kind = "cloud"\nvalue = {rng.uniform(0.15, 0.6):.2f}\n')
    return out


def _events(rng: random.Random, ids: list[str], days: float) -> tuple[list[str], list[Truth]]:
    """One of each labelled event, at random times after the first day (the detectors'
    warm-up) and apart from each other."""
    kinds = ["sag", "swell", "overcurrent", "stuck", "dropout", "outage", "theft"]
    rng.shuffle(kinds)
    thief = rng.choice(ids)  # a bypassed meter sees nothing else: the others are elsewhere
    others = [d for d in ids if d != thief]
    span = (days - 1) * DAY_S / len(kinds)
    toml, truths = [], []
    for i, kind in enumerate(kinds):
        at = DAY_S + i * span + rng.uniform(0, span / 3)
        who = [thief] if kind == "theft" else rng.sample(
            others, rng.randint(1, 3) if kind in ("sag", "swell") else 1)
        duration = {"sag": 1800, "swell": 1800, "overcurrent": 1200, "stuck": 4 * 3600,
                    "dropout": 3600, "outage": 3600, "theft": days * DAY_S}[kind]
        sim_kind, value = {"sag": ("sag", 195.0), "swell": ("swell", 258.0),
                           "overcurrent": ("overcurrent", 80.0), "stuck": ("stuck", 0.0)}.get(
            kind, ("", 0.0))
        if sim_kind:
            toml.append(f'[[event]]\nat = {at:.0f}\nduration = {duration}\nkind = "{sim_kind}"\n'
                        f'devices = {who!r}\nvalue = {value}\n'.replace("'", '"'))
        # A stuck meter's energy is wrong too: the balance may see it, rightly.
        targets = frozenset(who) | ({"F1", *ids} if kind in ("outage", "theft") else set()) \
            | ({"F1"} if kind == "stuck" else set()) \
            | ({"line-01"} if kind == "overcurrent" else set())  # the feeder carries it too
        slack = 2 * 3600 + PERIOD_S if kind == "theft" else 4 * PERIOD_S
        truths.append(Truth(kind, who[0], targets, at, at + duration, slack))
    return toml, truths


def _channel(index: int, q: Quantities, energy_mwh: int) -> Channel:
    def stat(x: float) -> Stat:
        v = round(x * 1000)
        return Stat(v, v, v)
    return Channel(index, 0, {"voltage": stat(q.voltage), "current": stat(abs(q.current)),
                              "power": stat(q.power), "power_factor": round(q.pf * 1000),
                              "frequency": round(q.frequency * 1000),
                              "energy_delta": energy_mwh})


def run(seed: int, days: float = 3.0, meters: int = 20, quiet: bool = False) -> Run:
    """One feeder for ``days``: a quiet one (clouds only), or one of each labelled event."""
    rng = random.Random(f"fleet:{seed}:{meters}:{quiet}")
    head = (f"[fleet]\nmeters = {meters}\nline_sensors = 1\npv_share = 0.3\n"
            f"day_seconds = {DAY_S}\nstart_hour = 0\nseed = {seed}\n")
    probe = parse(head)
    ids, lines = probe.meter_ids(), probe.line_sensor_ids()
    toml, truths = ([], []) if quiet else _events(rng, ids, days)
    grid = Grid(parse(head + "".join(toml + _clouds(rng, days))))
    result = Run(seed, meters, days, truths)
    devices = {d: Device(b"", "eval", "F1", "line_sensor" if d in lines else "meter")
               for d in ids + lines}
    checks = EdgeChecks(config(meters), devices)
    gain = {d: rng.gauss(1.0, 0.0025 if d in lines else 0.005) for d in devices}
    thief = next((t for t in truths if t.event == "theft"), None)
    away = {t.event: t for t in truths if t.event in ("dropout", "outage")}
    outage, drop = away.get("outage"), away.get("dropout")
    held: dict[str, list[Frame]] = {}  # a dropped-out meter's ring buffer
    boot = dict.fromkeys(devices, 1)
    seq = dict.fromkeys(devices, 0)
    t = float(PERIOD_S)
    while t <= days * DAY_S:
        now = T0_MS / 1000 + t
        state = grid.step(t)
        if thief is not None and t > thief.start:
            _steal(state, thief.device, ids, lines, 0.05, grid.scenario.fleet.losses)
        for dev, chans in state.items():
            if outage and outage.start <= t < outage.end:
                boot[dev] = 2  # the supply is gone: no frames; every device reboots
                continue
            chs = tuple(_channel(i, q, round(q.power * PERIOD_S / 3.6 * gain[dev]
                                             * rng.gauss(1.0, 0.005)))
                        for i, q in chans.items())
            seq[dev] += 1
            frame = Frame(dev, boot[dev], seq[dev], int(t * 1000), PERIOD_S * 1000, chs,
                          unix_ms=int(now * 1000))
            if drop and dev in drop.targets and drop.start <= t < drop.end:
                held.setdefault(dev, []).append(frame)
                continue
            for f in [*held.pop(dev, []), frame]:
                result.alarms += checks.observe(f, now)
        for k in (0.5, 1.0):
            result.alarms += checks.tick(now + k * PERIOD_S - 1)
        t += PERIOD_S
    return result


def _steal(state: dict[str, dict[int, Quantities]], thief: str, ids: list[str],
           lines: list[str], share: float, losses: float) -> None:
    """The thief's meter misses its load, and unmetered load beyond it brings the stolen
    power to ``share`` of the feeder's metered throughput; the feeder head carries it."""
    house = state[thief][0]
    state[thief][0] = Quantities(house.voltage, 0.0, 0.0, house.pf, house.frequency)
    through = sum(abs(q.power) for d in ids for q in state[d].values())
    stolen = max(house.power, share * through)
    for line in lines:
        q = state[line][1]
        power = q.power + stolen * (1 + losses)
        state[line][1] = Quantities(q.voltage, abs(power) / (q.voltage * abs(q.pf)), power,
                                    q.pf, q.frequency)


def score(runs: list[Run]) -> dict[str, Any]:
    """Per event type and per alarm kind, over runs (see the module's docstring)."""
    per_event: dict[str, dict[str, Any]] = {}
    per_kind: dict[str, dict[str, int]] = {}
    device_days = sum((r.meters + 1) * r.days for r in runs)
    for r in runs:
        raised = [a for a in r.alarms if a.state in ("raised", "event")
                  and a.kind not in SUMMARIES]
        for a in raised:
            k = per_kind.setdefault(a.kind, {"alarms": 0, "false": 0})
            k["alarms"] += 1
            k["false"] += not any(_about(a, tr) for tr in r.truths)
        for tr in r.truths:
            row = per_event.setdefault(tr.event, {"events": 0, "detected": 0, "right": 0,
                                                  "named": 0, "delays": []})
            mine = [a for a in raised if _about(a, tr)]
            hits = [a for a in mine if a.kind in EXPECTS[tr.event]]
            row["events"] += 1
            if hits:
                row["detected"] += 1
                row["delays"].append(hits[0].time_ms / 1000 - T0_MS / 1000 - tr.start)
                row["right"] += not any(a.kind in WRONG.get(tr.event, ()) for a in mine)
                suspects = hits[0].evidence.get("suspects")
                row["named"] += isinstance(suspects, list) and bool(suspects) \
                    and suspects[0]["device"] == tr.device
    events = {e: {"events": v["events"], "recall": round(v["detected"] / v["events"], 3),
                  "classified_right": round(v["right"] / v["events"], 3),
                  "median_delay_s": round(statistics.median(v["delays"]))
                  if v["delays"] else None,
                  "max_delay_s": round(max(v["delays"])) if v["delays"] else None,
                  **({"named_first": round(v["named"] / v["detected"], 3)}
                     if e == "theft" and v["detected"] else {})}
              for e, v in sorted(per_event.items())}
    kinds = {k: {**v, "false_per_device_day": round(v["false"] / device_days, 4)}
             for k, v in sorted(per_kind.items())}
    false = sum(v["false"] for v in per_kind.values())
    return {"runs": len(runs), "device_days": round(device_days, 1), "events": events,
            "alarm_kinds": kinds, "false_alarms": false,
            "false_per_device_day": round(false / device_days, 4) if device_days else None}


def _about(a: Alarm, tr: Truth) -> bool:
    t = a.time_ms / 1000 - T0_MS / 1000
    who = a.device or a.feeder or ""
    return who in tr.targets and tr.start <= t <= tr.end + tr.slack


def evaluate(seeds: range) -> dict[str, Any]:
    quiet = [run(s, 7.0, 20, quiet=True) for s in seeds]
    sizes = (5, 20, 60)
    events = [run(s, 4.0, sizes[i % len(sizes)]) for i, s in enumerate(seeds)]
    return {"period_s": PERIOD_S, "quiet_weeks": score(quiet), "events": score(events),
            "fleet_sizes": list(sizes)}


def table(result: dict[str, Any]) -> str:
    q, e = result["quiet_weeks"], result["events"]
    lines = [f"whole edge pipeline (gateway.checks, shipped [checks] + max_current 63 A; "
             f"{result['period_s']} s reports): {q['runs']} quiet weeks of 20 meters, 30 % "
             f"PV, clouds: {q['false_alarms']} false alarms "
             f"({q['false_per_device_day']} per device-day)",
             f"event runs ({e['runs']}, feeders of {'/'.join(map(str, result['fleet_sizes']))}"
             f" meters, 4 days): {e['false_alarms']} false alarms "
             f"({e['false_per_device_day']} per device-day)",
             f"{'event':<14}{'events':>7}{'recall':>8}{'classified':>11}{'delay s':>9}"
             f"{'max s':>8}{'named 1st':>11}"]
    for name, row in e["events"].items():
        delay, most, named = ("-" if row.get(k) is None else str(row[k])
                              for k in ("median_delay_s", "max_delay_s", "named_first"))
        lines.append(f"{name:<14}{row['events']:>7}{row['recall']:>8}"
                     f"{row['classified_right']:>11}{delay:>9}{most:>8}{named:>11}")
    lines.append(f"{'alarm kind':<20}{'quiet':>7}{'false':>7}{'events':>8}{'false':>7}")
    for kind in sorted(set(q["alarm_kinds"]) | set(e["alarm_kinds"])):
        a = q["alarm_kinds"].get(kind, {"alarms": 0, "false": 0})
        b = e["alarm_kinds"].get(kind, {"alarms": 0, "false": 0})
        lines.append(f"{kind:<20}{a['alarms']:>7}{a['false']:>7}{b['alarms']:>8}{b['false']:>7}")
    return "\n".join(lines)

