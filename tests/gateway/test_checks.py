"""Edge checks: thresholds with hysteresis and duration, overrides, anomalies, offline,
energy balance. Pure logic, driven by frames with their own clock."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.anomaly import AnomalyConfig, SeriesDetector
from gateway.checks import EdgeChecks
from gateway.config import ConfigError, parse
from gateway.devices import Device
from gateway.payloads import iso_ms
from gateway.protocol import ST_INVALID, Channel, Frame, Stat

T0 = 1_763_776_800_000
DEVICES = {"m1": Device(b"", site="s1", feeder="F1"),
           "m2": Device(b"", site="s2", feeder="F1"),
           "line": Device(b"", site="s1", feeder="F1", role="line_sensor")}


def checks(extra: str = "") -> EdgeChecks:
    cfg = parse("[uplink]\nenabled = false\n[checks]\nanomaly_profile_days = 0\n" + extra,
                env={})
    return EdgeChecks(cfg.checks, DEVICES)


def reading(device: str, seq: int, v: float = 230.0, i: float = 5.0, p: float = 1000.0,
            pf: float = 0.98, f: float = 50.0, e_wh: float = 0.0, ch: int = 0,
            status: int = 0) -> Frame:
    values: dict[str, Any] = {} if status & ST_INVALID else {
        "voltage": Stat(int(v * 1000), int(v * 1000), int(v * 1000)),
        "current": Stat(int(i * 1000), int(i * 1000), int(i * 1000)),
        "power": Stat(int(p * 1000), int(p * 1000), int(p * 1000)),
        "power_factor": int(pf * 1000), "frequency": int(f * 1000),
        "energy_delta": int(e_wh * 1000)}
    return Frame(device, 1, seq, seq * 10_000, 10_000, (Channel(ch, status, values),),
                 unix_ms=T0 + seq * 10_000)


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["kind"], e["state"]) for e in events]


def test_over_voltage_needs_duration_and_clears_with_hysteresis() -> None:
    c = checks()
    out = []
    volts = [230, 254, 255, 256, 253, 252, 251, 250, 249, 248]  # limit 253, clear < 247.94
    for seq, v in enumerate(volts):
        out.append(kinds(c.observe(reading("m1", seq, v=v))))
    assert out[1] == []  # over, but only since this frame
    assert out[2] == [("over_voltage", "raised")]  # frame times 10 s apart: held 10 s
    assert all(o == [] for o in out[3:])  # 248..253 is inside the hysteresis band
    more = [kinds(c.observe(reading("m1", s, v=245))) for s in (10, 11)]
    assert more == [[], [("over_voltage", "cleared")]]


def test_a_short_spike_raises_nothing() -> None:
    c = checks()
    events = [e for s, v in enumerate([230, 260, 230, 230]) for e in
              c.observe(reading("m1", s, v=v))]
    assert events == []


def test_overrides_most_specific_wins() -> None:
    c = checks("""
[checks.limits]
max_current = 60.0
min_duration_s = 0
[[checks.override]]
site = "s1"
limits = { max_current = 40.0 }
[[checks.override]]
device = "m1"
channel = 1
limits = { max_current = 20.0 }
""")
    assert c.limits_for("m2", 0).max_current == 60.0
    assert c.limits_for("m1", 0).max_current == 40.0
    assert c.limits_for("m1", 1).max_current == 20.0
    assert c.limits_for("m1", 1).min_duration_s == 0  # inherited, not the default 10
    assert kinds(c.observe(reading("m1", 0, i=25.0, ch=1))) == [("over_current", "raised")]
    assert kinds(c.observe(reading("m1", 1, i=25.0, ch=0))) == []


def test_frequency_and_power_factor() -> None:
    c = checks("[checks.limits]\nmin_duration_s = 0\n")
    ev = kinds(c.observe(reading("m1", 0, f=49.2, pf=0.5)))
    assert ("frequency_low", "raised") in ev and ("low_power_factor", "raised") in ev


def test_power_factor_is_judged_by_its_size_not_its_sign() -> None:
    """The ADE7953 signs its power factor with the active power: a feeder exporting at
    0.95 reads -0.95, which is no low power factor (make eval's quiet weeks raised it on
    every export); -0.5 still is."""
    c = checks("[checks.limits]\nmin_duration_s = 0\n")
    assert kinds(c.observe(reading("line", 0, p=-8000.0, pf=-0.95))) == []
    assert kinds(c.observe(reading("line", 1, p=-8000.0, pf=-0.5))) == \
        [("low_power_factor", "raised")]


def test_a_line_sensors_flow_is_left_to_the_balance_on_a_feeder_with_meters() -> None:
    """A cloud over a feeder's rooftop PV swings its head by tens of kW: the feeder's
    meters and the balance judge that, not the line sensor's own anomaly detector (it
    raised the last false alarms of make eval's quiet weeks). Its voltage is still
    judged; so is the flow of a line sensor whose feeder has no meters."""
    c = checks()
    for seq in range(40):
        c.observe(reading("line", seq, v=230.0 + seq % 3, p=20000.0 + seq % 3))
    spike = c.observe(reading("line", 40, v=300.0, p=-20000.0))
    assert {(e.kind, e.evidence.get("quantity")) for e in spike} == {("anomaly", "voltage")}
    alone = EdgeChecks(checks().cfg, {"line": DEVICES["line"]})
    for seq in range(40):
        alone.observe(reading("line", seq, v=230.0 + seq % 3, p=20000.0 + seq % 3))
    found = alone.observe(reading("line", 40, p=-20000.0))
    assert ("anomaly", "power") in {(e.kind, e.evidence.get("quantity")) for e in found}


def test_invalid_channels_are_not_judged() -> None:
    c = checks("[checks.limits]\nmin_duration_s = 0\n")
    assert c.observe(reading("m1", 0, status=ST_INVALID)) == []


def test_offline_and_back() -> None:
    c = checks()
    t = T0 / 1000  # the gateway's clock when the meter's first frame (sampled at T0) came
    c.observe(reading("m1", 0), now=t)
    assert c.tick(now=t + 25) == []  # 2.5 periods of silence
    ev = c.tick(now=t + 31)
    assert kinds(ev) == [("offline", "raised")] and ev[0]["silent_s"] == 31.0
    assert c.tick(now=t + 40) == []  # raised once
    # The first frame after the outage is one the meter buffered, sampled at T0 + 10 s,
    # before the raise: the clear still comes after the raise, in the gateway's time.
    cleared = c.observe(reading("m1", 1), now=t + 41)[0]
    assert (cleared["kind"], cleared["state"]) == ("offline", "cleared")
    assert cleared["time"] == iso_ms(T0 + 41_000) > ev[0]["time"] == iso_ms(T0 + 31_000)
    assert cleared["offline_s"] == 10.0


def test_energy_balance_finds_a_bypass() -> None:
    c = checks("balance_window_s = 60\nbalance_threshold = 0.05\n")
    c.tick(now=0.0)
    for s in range(6):
        c.observe(reading("line", s, e_wh=10.0), now=s * 10.0)
        c.observe(reading("m1", s, e_wh=4.0), now=s * 10.0)
        c.observe(reading("m2", s, e_wh=4.0), now=s * 10.0)  # 20 % unaccounted
    ev = c.tick(now=61.0)
    assert kinds(ev) == [("non_technical_loss", "raised")]
    # 12 of the 48 Wh through the meters unaccounted: loss 0.25; the cables take 3 % of 60
    assert ev[0]["loss"] == 0.25 and ev[0]["excess"] == 0.2125  # 0.25 - 0.03 * 60 / 48
    assert ev[0]["feeder"] == "F1" and ev[0]["line_wh"] == 60.0 and ev[0]["throughput_wh"] == 48.0
    for s in range(6, 12):  # the bypass is removed
        c.observe(reading("line", s, e_wh=10.0), now=s * 10.0)
        c.observe(reading("m1", s, e_wh=5.0), now=s * 10.0)
        c.observe(reading("m2", s, e_wh=4.9), now=s * 10.0)
    assert kinds(c.tick(now=122.0)) == [("non_technical_loss", "cleared")]


def test_anomaly_detector_spike_and_stuck() -> None:
    det = SeriesDetector(AnomalyConfig(sensitivity=5.0, warmup=20, stuck_after=5))
    import random

    rnd = random.Random(1)
    found = []
    for _ in range(200):
        found += det.observe(1000.0 + rnd.gauss(0, 10), 10)
    assert found == []  # normal noise: nothing
    spike = det.observe(1200.0, 10)
    assert [f.kind for f in spike] == ["anomaly"] and spike[0].score > 5
    assert abs(spike[0].baseline - 1000) < 10
    stuck = [(f.kind, f.state) for _ in range(6) for f in det.observe(1003.0, 10)]
    assert stuck.count(("stuck_value", "raised")) == 1
    assert ("anomaly", "cleared") in stuck  # the spike was one reading
    assert [(f.kind, f.state) for f in det.observe(1004.0, 10)] == [("stuck_value", "cleared")]


def test_an_excursion_is_one_alarm_raised_then_cleared() -> None:
    det = SeriesDetector(AnomalyConfig(sensitivity=5.0, warmup=20))
    import random

    rnd = random.Random(2)
    for _ in range(100):
        assert det.observe(1000.0 + rnd.gauss(0, 10), 10) == []
    during = [(f.kind, f.state) for _ in range(10) for f in det.observe(2000.0, 10)]
    assert during == [("anomaly", "raised")]  # ten readings out: one alarm
    after = [(f.kind, f.state) for f in det.observe(1000.0, 10)]
    assert after == [("anomaly", "cleared")]


def test_zero_is_not_stuck_and_a_steady_voltage_has_a_noise_floor() -> None:
    det = SeriesDetector(AnomalyConfig(sensitivity=5.0, warmup=5, stuck_after=5))
    assert [f for _ in range(50) for f in det.observe(0.0, 10)] == []  # PV at night
    volts = SeriesDetector(AnomalyConfig(sensitivity=5.0, warmup=5))
    for _ in range(50):
        volts.observe(230_000.0 + _ % 2, 10)  # mV, almost constant
    assert volts.observe(231_000.0, 10) == []  # one volt is not an anomaly at 230 V
    assert [f.kind for f in volts.observe(245_000.0, 10)] == ["anomaly"]


def test_anomaly_events_carry_evidence() -> None:
    c = checks("anomaly_warmup = 10\n")
    for s in range(40):
        c.observe(reading("m1", s, p=1000.0 + (s % 3) * 10))
    ev = [e for e in c.observe(reading("m1", 40, p=5000.0)) if e["kind"] == "anomaly"]
    # In W, like the thresholds.
    assert ev and ev[0]["quantity"] == "power" and ev[0]["value"] == 5000.0
    assert {"baseline", "score"} <= set(ev[0])


def test_rate_of_change_raises_on_a_fast_step_and_clears_at_the_next_slow_one() -> None:
    c = checks("max_rate_v_per_s = 1.0\nmax_rate_w_per_s = 100.0\n")
    out = [c.observe(reading("m1", s, v=v)) for s, v in enumerate([230, 231, 240, 240.5, 230])]
    found = [[(e["kind"], e["state"]) for e in ev if e["kind"] == "rate_of_change"]
             for ev in out]
    # Readings 10 s apart: +1 V is 0.1 V/s (fine), +9 V is 0.9 V/s (fine), -10.5 V is over.
    assert found == [[], [], [], [], [("rate_of_change", "raised")]]
    ev = next(e for e in out[4] if e["kind"] == "rate_of_change")
    assert ev["quantity"] == "voltage" and ev["value"] == 230.0 and ev["baseline"] == 240.5
    assert ev["score"] == 1.05  # 1.05 V/s against 1 V/s
    assert ("rate_of_change", "m1", "0") in c.open_alarms()
    cleared = [(e["kind"], e["state"]) for e in c.observe(reading("m1", 5, v=230.2))
               if e["kind"] == "rate_of_change"]
    assert cleared == [("rate_of_change", "cleared")]
    assert ("rate_of_change", "m1", "0") not in c.open_alarms()


def test_rate_of_change_is_off_unless_configured() -> None:
    c = checks()
    events = [e for s, v in enumerate([230, 100, 230]) for e in c.observe(reading("m1", s, v=v))]
    assert not [e for e in events if e["kind"] == "rate_of_change"]
    with pytest.raises(ConfigError, match=r"checks.max_rate_v_per_s"):
        parse("[uplink]\nenabled = false\n[checks]\nmax_rate_v_per_s = -1\n", env={})
