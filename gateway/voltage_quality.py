"""Supply voltage quality over time, as EN 50160 states it: 10-minute means and a week.

EN 50160 (section 4.2.2, LV supply voltage variations) judges a supply by the mean r.m.s.
voltage over 10-minute intervals: over each week, 95 % of them must lie within Un +-10 %,
and all of them within Un +10 % / -15 %. Per (device, channel) this module keeps the
running 10-minute interval (aligned to the clock: :00, :10, ... UTC) and the week's counts
(aligned to Monday 00:00 UTC), and emits two kinds of record:

- ``voltage_mean`` when an interval ends: its mean (weighted by each frame's period), the
  lowest frame minimum and highest frame maximum, and how many frames it holds;
- ``voltage_week`` when a week ends: how many 10-minute means it had, the share within
  Un +-10 % (``in_band``), how many were outside +10 % / -15 %, the extremes, and
  ``compliant``: in_band >= 0.95 and none outside the wide band. Weeks with no means are
  not reported.

Time is the frame's (the device clock when synchronised), so a late frame lands in the
interval it was measured in, as long as that interval is still open: one that has closed
is not reopened (a backend has the readings for a recount). An interval also closes when
the gateway's clock passes its end by one more interval with no frame of a later one
(the device fell silent). Pure logic; memory: a few numbers per series.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERVAL_MS = 600_000
WEEK_MS = 7 * 86_400_000
MONDAY_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday: weeks start 4 days later


@dataclass
class Series:
    start: int  # ms, the open interval's start
    weighted: float = 0.0  # sum of mean x period (V ms)
    weight: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    frames: int = 0
    week: int = 0  # ms, the week's start
    means: int = 0
    in_band: int = 0
    outside_wide: int = 0
    week_low: float = float("inf")
    week_high: float = float("-inf")


@dataclass(frozen=True)
class Record:
    kind: str  # voltage_mean or voltage_week
    device: str
    channel: int
    time_ms: int  # the interval's or the week's end
    evidence: dict[str, object]


def week_start(t_ms: int) -> int:
    return (t_ms - MONDAY_MS) // WEEK_MS * WEEK_MS + MONDAY_MS


class VoltageQuality:
    def __init__(self, nominal_v: float, band: float = 0.10, low_wide: float = 0.15) -> None:
        self.nominal = nominal_v
        self.band = band  # EN 50160: +-10 % for 95 % of the week
        self.low_wide = low_wide  # and never below -15 % (nor above +10 %)
        self.series: dict[tuple[str, int], Series] = {}

    def add(self, device: str, channel: int, t_ms: int, mean_v: float, low_v: float,
            high_v: float, period_ms: int) -> list[Record]:
        """One frame's voltage on one channel; returns what closed."""
        start = t_ms // INTERVAL_MS * INTERVAL_MS
        s = self.series.get((device, channel))
        out: list[Record] = []
        if s is None:
            s = self.series[(device, channel)] = Series(start, week=week_start(start))
        elif start > s.start:
            out += self._close(device, channel, s)
            s.start = start
            if week_start(start) > s.week:
                out += self._close_week(device, channel, s)
                s.week = week_start(start)
        elif start < s.start:
            return out  # its interval has closed
        s.weighted += mean_v * period_ms
        s.weight += period_ms
        s.low = min(s.low, low_v)
        s.high = max(s.high, high_v)
        s.frames += 1
        return out

    def tick(self, now_ms: int) -> list[Record]:
        """Intervals whose device fell silent: closed one interval after their end."""
        out: list[Record] = []
        for (device, channel), s in list(self.series.items()):
            if s.frames and now_ms >= s.start + 2 * INTERVAL_MS:
                out += self._close(device, channel, s)
                s.start += INTERVAL_MS  # closed: a late frame of it is not counted again
        return out

    def _close(self, device: str, channel: int, s: Series) -> list[Record]:
        if not s.frames or s.weight <= 0:
            return []
        mean = s.weighted / s.weight
        rec = Record("voltage_mean", device, channel, s.start + INTERVAL_MS, {
            "interval_start_ms": s.start, "mean_v": round(mean, 3), "min_v": round(s.low, 3),
            "max_v": round(s.high, 3), "frames": s.frames})
        deviation = (mean - self.nominal) / self.nominal
        s.means += 1
        s.in_band += abs(deviation) <= self.band
        s.outside_wide += not -self.low_wide <= deviation <= self.band
        s.week_low = min(s.week_low, mean)
        s.week_high = max(s.week_high, mean)
        s.weighted = s.weight = 0.0
        s.low, s.high, s.frames = float("inf"), float("-inf"), 0
        return [rec]

    def _close_week(self, device: str, channel: int, s: Series) -> list[Record]:
        if not s.means:
            return []
        share = s.in_band / s.means
        rec = Record("voltage_week", device, channel, s.week + WEEK_MS, {
            "week_start_ms": s.week, "nominal_v": self.nominal, "means": s.means,
            "in_band": round(share, 4), "outside_wide": s.outside_wide,
            "min_mean_v": round(s.week_low, 3), "max_mean_v": round(s.week_high, 3),
            "compliant": share >= 0.95 and s.outside_wide == 0})
        s.means = s.in_band = s.outside_wide = 0
        s.week_low, s.week_high = float("inf"), float("-inf")
        return [rec]
