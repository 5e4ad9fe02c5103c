"""``make eval``, feeder energy balance: quiet weeks and seeded thefts from the simulator.

Each run is one feeder of the fleet simulator's households (tools/sim_profiles.py: daily
load curves, rooftop PV on a share of them, a signed feeder-head sensor, 3 % line losses)
in simulated real time, one reading per device every ``step_s``, through the gateway's
own ``gateway.balance.EnergyBalance`` with the shipped [checks] defaults (window 1 h,
threshold 0.05, technical allowance 0.03). A *quiet week* has no theft: every raised alarm
is false. A *theft* run steals ``share`` of the feeder's metered throughput from a random hour of
day 3 on (the feeder head still carries it): the thief's meter misses ``bypass`` of its
house's load, and unmetered load beyond it (a second, hidden circuit) makes up the rest.
It is found if the alarm is raised within two windows of the start, and the right meter
is named if it is the first suspect. A *line tap* (``bypass`` 0) steals the same way with
no meter bypassed: found, but there is no thief among the meters to name; the table shows
how often the suspects list names one anyway.

The simulator's ICs are exact; real ones are not, so every register here carries the error
of its accuracy class: a gain error fixed per device (sigma 0.5 % for the class 1 meters,
0.25 % for the class 0.5 feeder sensor) and 0.5 % of noise per reading. Seeds 0-9 tune,
10-29 report, as for the anomaly detector.
"""

from __future__ import annotations

import random
from typing import Any

from gateway.balance import EnergyBalance
from gateway.config import ChecksSection
from tools.sim_profiles import Grid
from tools.sim_scenario import parse

DAY_S = 86_400.0
THEFTS = (  # name, share of the metered throughput, share of the thief's load it misses
    ("5 % (meter bypassed)", 0.05, 1.0), ("10 % (meter bypassed)", 0.10, 1.0),
    ("20 % (meter bypassed)", 0.20, 1.0), ("5 % (half bypassed)", 0.05, 0.5),
    ("5 % (line tap)", 0.05, 0.0))


def feeder(seed: int, meters: int, pv_share: float) -> Grid:
    return Grid(parse(f"[fleet]\nmeters = {meters}\nline_sensors = 1\npv_share = {pv_share}\n"
                      f"day_seconds = {DAY_S}\nstart_hour = 0\nseed = {seed}\n"))


def run(seed: int, days: float, share: float = 0.0, bypass: float = 1.0, meters: int = 20,
        pv_share: float = 0.3, step_s: float = 300.0,
        cfg: ChecksSection | None = None) -> dict[str, Any]:
    """One feeder for ``days``; a theft of ``share`` of the metered throughput if > 0, of
    which ``bypass`` of the thief's house load is missed by its meter."""
    cfg = cfg or ChecksSection()
    grid = feeder(seed, meters, pv_share)
    rng = random.Random(seed)
    ids = grid.scenario.meter_ids()
    thief = rng.choice(ids) if share else None
    start = 2 * DAY_S + rng.randrange(24) * 3600 if share else None
    balance = EnergyBalance(cfg.balance_threshold, cfg.balance_technical_loss)
    lines = set(grid.scenario.line_sensor_ids())
    gain = {d: rng.gauss(1.0, 0.0025 if d in lines else 0.005) for d in ids + sorted(lines)}
    window = cfg.balance_window_s
    raised: list[tuple[float, list[Any]]] = []
    stolen = stolen_before = through = 0.0
    # The balance before this one, for the record: an unsigned feeder sensor (a PZEM-004T
    # reads the magnitude of an import and 0 on export) and loss = (line - meters) / line.
    legacy = {"line": 0.0, "meters": 0.0, "raised": 0}
    t, next_close = step_s, float(window)
    while t <= days * DAY_S:
        state = grid.step(t)
        on = start is not None and t > start
        step: dict[tuple[str, int], float] = {}
        for dev, chans in state.items():
            balance.covered("F1", dev, step_s)
            for ch, q in chans.items():
                wh = q.power * step_s / 3600 * gain[dev] * rng.gauss(1.0, 0.005)
                if dev == thief and ch == 0 and on and wh > 0:
                    stolen += wh * bypass
                    wh *= 1 - bypass
                step[dev, ch] = wh
        if on:  # the hidden circuit brings the theft to its share of this step's flow
            flow = sum(abs(wh) for (dev, _), wh in step.items() if dev not in lines)
            through += flow
            extra = max(0.0, share * flow - (stolen - stolen_before))
            stolen += extra
            for key in step:
                if key[0] in lines:
                    step[key] += extra * (1 + grid.scenario.fleet.losses)
        stolen_before = stolen
        for (dev, _), wh in step.items():
            line = dev in lines
            balance.add("F1", dev, line, wh)
            legacy["line" if line else "meters"] += max(wh, 0.0) if line else wh
        if t >= next_close:
            old = legacy["line"] > 0 and \
                (legacy["line"] - legacy["meters"]) / legacy["line"] > 0.05
            legacy.update(line=0.0, meters=0.0, raised=legacy["raised"] + old)
            for v in balance.close(window):
                suspects = v.evidence.get("suspects")
                if v.state == "raised":
                    raised.append((t, suspects if isinstance(suspects, list) else []))
            next_close += window
        t += step_s
    out: dict[str, Any] = {"raised": len(raised), "legacy_windows_alarmed": legacy["raised"]}
    if start is not None:
        after = [(at, s) for at, s in raised if at > start]
        first = after[0] if after else None
        windows = None if first is None else int(-(-(first[0] - start) // window))
        out["windows_to_detect"] = windows
        out["found"] = windows is not None and windows <= 2
        out["named"] = bool(first and first[1] and first[1][0]["device"] == thief)
        out["named_anyone"] = bool(first and first[1])
        out["false"] = len([1 for at, _ in raised if at <= start])
        out["stolen_share"] = stolen / through if through else 0.0
    else:
        out["false"] = len(raised)
    return out


def evaluate(seeds: range, cfg: ChecksSection | None = None) -> dict[str, Any]:
    cfg = cfg or ChecksSection()
    quiet = [run(s, 7.0, cfg=cfg) for s in seeds]
    result: dict[str, Any] = {
        "threshold": cfg.balance_threshold, "technical_loss": cfg.balance_technical_loss,
        "quiet_weeks": len(quiet), "quiet_false_alarms": sum(r["false"] for r in quiet),
        "quiet_legacy_windows_alarmed": sum(r["legacy_windows_alarmed"] for r in quiet),
        "thefts": {}}
    for name, share, bypass in THEFTS:
        runs = [run(s, 4.0, share, bypass, cfg=cfg) for s in seeds]
        found = [r for r in runs if r["found"]]
        result["thefts"][name] = {
            "runs": len(runs),
            "stolen_share_of_throughput": round(
                sum(r["stolen_share"] for r in runs) / len(runs), 4),
            "found_within_2_windows": round(len(found) / len(runs), 3),
            "named_first": round(sum(r["named"] for r in found) / len(found), 3)
            if found and bypass else None,
            "named_someone": round(sum(r["named_anyone"] for r in found) / len(found), 3)
            if found else None,
            "false_before": sum(r["false"] for r in runs)}
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"feeder energy balance (gateway.balance, threshold {result['threshold']}, "
             f"technical loss {result['technical_loss']}): "
             f"{result['quiet_weeks']} quiet weeks (20 meters, 30 % PV): "
             f"{result['quiet_false_alarms']} false alarms (the unsigned balance before: "
             f"{result['quiet_legacy_windows_alarmed']} windows in alarm)",
             f"{'theft':<24}{'runs':>5}{'stolen/throughput':>19}{'found<=2w':>11}"
             f"{'named 1st':>11}{'named any':>11}{'false':>7}"]
    for name, row in result["thefts"].items():
        named = "-" if row["named_first"] is None else str(row["named_first"])
        anyone = "-" if row["named_someone"] is None else str(row["named_someone"])
        lines.append(f"{name:<24}{row['runs']:>5}{row['stolen_share_of_throughput']:>19}"
                     f"{row['found_within_2_windows']:>11}{named:>11}{anyone:>11}"
                     f"{row['false_before']:>7}")
    return "\n".join(lines)
