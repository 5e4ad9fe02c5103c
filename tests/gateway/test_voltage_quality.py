"""EN 50160 supply voltage over time (gateway/voltage_quality.py): 10-minute means and the
weekly 95 % figure, from frames as the edge checks see them."""

from __future__ import annotations

from gateway.voltage_quality import INTERVAL_MS, WEEK_MS, VoltageQuality, week_start

MONDAY = 1_700_438_400_000  # 2023-11-20 00:00 UTC, a Monday


def test_weeks_start_on_monday_midnight_utc() -> None:
    assert week_start(MONDAY) == MONDAY
    assert week_start(MONDAY + WEEK_MS - 1) == MONDAY
    assert week_start(MONDAY - 1) == MONDAY - WEEK_MS


def test_a_10_minute_mean_weighs_each_frame_by_its_period() -> None:
    vq = VoltageQuality(230.0)
    t = MONDAY + 3 * INTERVAL_MS
    assert vq.add("m1", 0, t, 230.0, 229.0, 231.0, 60_000) == []
    assert vq.add("m1", 0, t + 60_000, 240.0, 238.0, 246.0, 540_000) == []
    (rec,) = vq.add("m1", 0, t + INTERVAL_MS, 231.0, 231.0, 231.0, 60_000)
    assert (rec.kind, rec.device, rec.channel, rec.time_ms) == (
        "voltage_mean", "m1", 0, t + INTERVAL_MS)
    assert rec.evidence == {"interval_start_ms": t, "mean_v": 239.0, "min_v": 229.0,
                            "max_v": 246.0, "frames": 2}
    # A late frame of a closed interval is not counted again.
    assert vq.add("m1", 0, t + 5_000, 100.0, 100.0, 100.0, 10_000) == []


def test_a_week_is_compliant_with_95_percent_in_band_and_none_below_85() -> None:
    vq = VoltageQuality(230.0)
    records = []
    n = WEEK_MS // INTERVAL_MS  # 1008 means
    for i in range(n):
        v = 260.0 if i < 40 else 230.0  # 40 of 1008 above +10 %: 96.0 % in band
        records += vq.add("m1", 0, MONDAY + i * INTERVAL_MS, v, v, v, 600_000)
    (week,) = [r for r in vq.add("m1", 0, MONDAY + WEEK_MS, 230.0, 230.0, 230.0, 600_000)
               if r.kind == "voltage_week"]
    assert len([r for r in records if r.kind == "voltage_mean"]) == n - 1
    assert week.time_ms == MONDAY + WEEK_MS and week.evidence["week_start_ms"] == MONDAY
    assert week.evidence["means"] == n and week.evidence["in_band"] == round(968 / 1008, 4)
    # Above +10 % is outside the wide band too (+10 % / -15 %): not compliant.
    assert week.evidence["outside_wide"] == 40 and week.evidence["compliant"] is False
    vq2 = VoltageQuality(230.0)
    for i in range(n):
        v = 200.0 if i < 40 else 230.0  # -13 %: out of +-10 %, inside -15 %
        vq2.add("m1", 0, MONDAY + i * INTERVAL_MS, v, v, v, 600_000)
    (week2,) = [r for r in vq2.add("m1", 0, MONDAY + WEEK_MS, 230.0, 230.0, 230.0, 600_000)
                if r.kind == "voltage_week"]
    assert week2.evidence["compliant"] is True and week2.evidence["outside_wide"] == 0
    assert week2.evidence["min_mean_v"] == 200.0 and week2.evidence["max_mean_v"] == 230.0


def test_a_silent_device_s_interval_closes_on_the_gateway_clock() -> None:
    vq = VoltageQuality(230.0)
    t = MONDAY + 7 * INTERVAL_MS
    vq.add("m1", 0, t, 231.0, 231.0, 231.0, 10_000)
    assert vq.tick(t + INTERVAL_MS) == []
    (rec,) = vq.tick(t + 2 * INTERVAL_MS)
    assert rec.kind == "voltage_mean" and rec.evidence["mean_v"] == 231.0
    assert vq.tick(t + 3 * INTERVAL_MS) == []
