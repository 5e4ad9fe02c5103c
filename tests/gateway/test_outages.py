"""Feeder outages against single-meter dropouts (gateway/outages.py through EdgeChecks).

Meters report every 10 s at their own phase; the gateway ticks every second, as the
daemon does (every 200 ms) but coarser. An outage is every meter of a feeder falling
silent at one moment; a dropout is one meter (or two) falling silent on its own. Each must
come out as what it is: one ``outage`` record with start, end, duration and the meters
affected, and no per-meter offline alarms for them; or per-meter ``offline`` alarms and no
outage. The seeded test runs 300 random cases of both.
"""

from __future__ import annotations

import random
from typing import Any

from gateway.checks import EdgeChecks
from gateway.config import parse
from gateway.devices import Device
from gateway.protocol import Channel, Frame, Stat

PERIOD_S = 10.0


def fleet(n: int, line_sensor: bool = False) -> dict[str, Device]:
    devices = {f"m{i:03d}": Device(b"", site="s1", feeder="F1") for i in range(n)}
    devices["other"] = Device(b"", site="s2", feeder="F2")
    if line_sensor:
        devices["line"] = Device(b"", site="s1", feeder="F1", role="line_sensor")
    return devices


def frame(device: str, seq: int, volts: float = 230.0) -> Frame:
    v = int(volts * 1000)
    return Frame(device, 1, seq, seq * 10_000, 10_000,
                 (Channel(0, 0, {"voltage": Stat(v, v, v)}),), unix_ms=None)


class Run:
    """Drives EdgeChecks with frames and ticks in gateway time; keeps every record."""

    def __init__(self, devices: dict[str, Device], extra: str = "") -> None:
        cfg = parse("[uplink]\nenabled = false\n[checks]\n" + extra, env={})
        self.checks = EdgeChecks(cfg.checks, devices)
        self.devices = sorted(devices)
        self.phase = {d: random.Random(d).uniform(0, PERIOD_S) for d in self.devices}
        self.seq = dict.fromkeys(self.devices, 0)
        self.records: list[dict[str, Any]] = []
        self.t = 0.0

    def until(self, t_end: float, silent: set[str] = frozenset(),  # type: ignore[assignment]
              volts: dict[str, float] | None = None) -> None:
        while self.t < t_end:
            nxt = self.t + 1.0
            for d in self.devices:
                if d in silent:
                    continue
                # every report that falls in (t, nxt]
                k = int((nxt - self.phase[d]) // PERIOD_S)
                while self.seq[d] <= k:
                    at = self.phase[d] + self.seq[d] * PERIOD_S
                    if at > self.t:
                        v = (volts or {}).get(d, 230.0)
                        self.records += [dict(r) for r in self.checks.observe(
                            frame(d, self.seq[d], v), now=at)]
                    self.seq[d] += 1
            self.t = nxt
            self.records += [dict(r) for r in self.checks.tick(now=self.t)]

    def skip_silence(self, silent: set[str]) -> None:
        """Silent devices' missed reports are not sent later: their counter moves on."""
        for d in silent:
            self.seq[d] = int((self.t - self.phase[d]) // PERIOD_S) + 1

    def kinds(self, kind: str, state: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records
                if r["kind"] == kind and (state is None or r["state"] == state)]


def test_a_feeder_outage_is_one_record_not_an_alarm_per_meter() -> None:
    run = Run(fleet(10))
    run.until(100)
    down = {f"m{i:03d}" for i in range(10)}
    run.until(200, silent=down)
    raised = run.kinds("outage", "raised")
    assert len(raised) == 1 and run.kinds("offline") == []
    out = raised[0]
    assert out["feeder"] == "F1" and out["device"] == "" and out["meters"] == 10
    assert out["cause"] == "meters_silent" and out["devices"] == sorted(down)
    assert 90_000 <= out["start_ms"] <= 100_000  # the earliest last frame of the silent
    run.skip_silence(down)
    back = down - {"m000", "m001", "m002", "m003"}
    run.until(230, silent=down - back)
    cleared = run.kinds("outage", "cleared")
    assert len(cleared) == 1 and cleared[0]["meters"] == 10
    assert cleared[0]["duration_s"] == round((cleared[0]["end_ms"] - out["start_ms"]) / 1000, 1)
    assert 100 <= cleared[0]["duration_s"] <= 140 and cleared[0]["still_silent"] == 4
    # The four meters still silent after the feeder came back are dropouts of their own.
    assert sorted(r["device"] for r in run.kinds("offline", "raised")) == sorted(down - back)
    assert ("outage", "F1", "") not in run.checks.open_alarms()


def test_one_or_two_silent_meters_are_dropouts() -> None:
    run = Run(fleet(10))
    run.until(100)
    run.until(200, silent={"m004", "m007"})
    assert run.kinds("outage") == []
    assert sorted(r["device"] for r in run.kinds("offline", "raised")) == ["m004", "m007"]
    # The alarm waits 1.2 periods for the rest of the feeder: 3 periods + 1.2 + a tick.
    for r in run.kinds("offline", "raised"):
        assert 42 <= r["silent_s"] <= 45


def test_a_dead_line_raises_the_outage_at_once() -> None:
    run = Run(fleet(6, line_sensor=True))
    run.until(60)
    run.until(75, volts={"line": 3.0})  # the line sensor still reports, on a dead line
    raised = run.kinds("outage", "raised")
    assert len(raised) == 1 and raised[0]["cause"] == "no_voltage"
    meters = {f"m{i:03d}" for i in range(6)}
    run.until(150, silent=meters, volts={"line": 2.0})  # the meters lose their supply
    assert run.kinds("offline") == [] and len(run.kinds("outage", "raised")) == 1
    run.skip_silence(meters)
    run.until(200)
    cleared = run.kinds("outage", "cleared")
    assert len(cleared) == 1 and cleared[0]["meters"] == 6
    assert run.kinds("offline") == []


def test_a_small_feeder_raises_offline_without_waiting() -> None:
    run = Run(fleet(2))  # below outage_min_meters: no grace period
    run.until(50)
    run.until(100, silent={"m000"})
    off = run.kinds("offline", "raised")
    assert [r["device"] for r in off] == ["m000"] and off[0]["silent_s"] <= 32


def test_seeded_outages_and_dropouts_are_told_apart() -> None:
    """300 seeded cases: feeders of 3..60 meters; an outage takes 80-100 % of them at once
    (the rest are on a healthy branch), a dropout case takes 1-2 meters at random moments.
    Every outage case gives exactly one outage and no offline alarm for its meters; every
    dropout case gives no outage and exactly one offline alarm per dropped meter."""
    wrong = []
    for seed in range(300):
        rng = random.Random(seed)
        n = rng.randint(3, 60)
        run = Run(fleet(n))
        meters = [f"m{i:03d}" for i in range(n)]
        run.until(rng.uniform(40, 80))
        if seed % 2 == 0:
            down = set(rng.sample(meters, max(3, round(n * rng.uniform(0.8, 1.0)))))
            run.until(run.t + rng.uniform(60, 300), silent=down)
            run.skip_silence(down)
            run.until(run.t + 40)
            ok = (len(run.kinds("outage", "raised")) == 1
                  and len(run.kinds("outage", "cleared")) == 1
                  and run.kinds("offline") == []
                  and run.kinds("outage", "raised")[0]["meters"] == len(down))
        else:
            dropped = rng.sample(meters, rng.randint(1, 2))
            silent: set[str] = set()
            for d in dropped:
                run.until(run.t + rng.uniform(0, 120), silent=silent)
                silent.add(d)
            run.until(run.t + 80, silent=silent)
            ok = (run.kinds("outage") == []
                  and sorted(r["device"] for r in run.kinds("offline", "raised"))
                  == sorted(dropped))
        if not ok:
            wrong.append(seed)
    assert wrong == []
