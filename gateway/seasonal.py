"""A series' daily profile: its usual value and spread for each hour of the day, learnt over days.

``DailyProfile`` keeps 24 hourly bins of time of day (UTC) for weekdays and 24 for
weekends (Saturday and Sunday, UTC): a household's Saturday morning is not its Tuesday
morning. A day type's bin judges alone once it has seen ``OWN_DAYS`` days; until then the
other type's bin of the same hour stands in if it has seen more (a series' first weekend
is judged by its weekdays). Within the current bin it
accumulates the day's mean and spread (Welford); when the bin ends, that day's figures
are folded into the bin's profile: the mean moves ``ALPHA`` of the way to the day's mean,
and the spread to the root-sum-square of the day's own spread and its distance from the
profile, so a bin whose days differ (evenings that vary, a sunrise that moves) learns a
wider spread than one whose days agree. A bin judges once it has seen ``TRAINED_DAYS``
days. Its spread is the widest of its own and its trained neighbours': the hour next to a
ramp (a morning peak, a sunrise that creeps earlier with the season) is judged with the
ramp's spread, not with the flat hour's; a spread learnt from few days is widened (x2 after
one day, x1.5 after two). A bin seen only in part (the series' first hour, the hour after
a gap) is not learnt. Pure arithmetic; memory: 3 x 48 numbers.
"""

from __future__ import annotations

import math

HOURS = 24
BINS = 2 * HOURS  # weekday hours, then weekend hours
BIN_S = 3600.0
DAY_S = HOURS * BIN_S
OWN_DAYS = 2  # days a day type's own bin must have seen before it judges alone
ALPHA = 0.3  # weight of a new day in a bin's profile: about the last three days count
TRAINED_DAYS = 1


class DailyProfile:
    __slots__ = ("bin", "days", "m", "m2", "mean", "n", "spread", "whole")

    def __init__(self) -> None:
        self.mean = [0.0] * BINS
        self.spread = [0.0] * BINS
        self.days = bytearray(BINS)  # days each bin has seen, up to 255
        self.bin = -1  # the bin being accumulated, whether it is seen from its start...
        self.whole = False
        self.n, self.m, self.m2 = 0, 0.0, 0.0

    @staticmethod
    def bin_of(t_s: float) -> int:
        """The bin of a time: its hour (UTC), plus HOURS on a Saturday or a Sunday (day 0
        of Unix time, 1970-01-01, was a Thursday)."""
        weekend = (int(t_s // DAY_S) + 3) % 7 >= 5
        return int(t_s % DAY_S // BIN_S) + HOURS * weekend

    def borrowed(self, b: int) -> bool:
        """Whether ``expect(b)`` stands in with the other day type's bin."""
        other = (b + HOURS) % BINS
        return self.days[b] < OWN_DAYS and self.days[other] > self.days[b]

    def expect(self, b: int) -> tuple[float, float] | None:
        """The bin's usual value and spread (a standard deviation), once it is trained:
        the day type's own bin, or the other type's if the own one has seen fewer than
        OWN_DAYS days and the other more."""
        days = self.days
        if self.borrowed(b):
            b = (b + HOURS) % BINS
        if days[b] < TRAINED_DAYS:
            return None
        spread = self.spread
        base = b - b % HOURS  # the neighbours are the same day type's
        before, after = base + (b - 1) % HOURS, base + (b + 1) % HOURS
        s = spread[b]
        if days[before] >= TRAINED_DAYS and spread[before] > s:
            s = spread[before]
        if days[after] >= TRAINED_DAYS and spread[after] > s:
            s = spread[after]
        # A spread learnt from few days is itself uncertain: wider by 1/days (x2 after one
        # day), as a t-distribution's tails are wider than a normal's for a small sample.
        return self.mean[b], s * (1 + 1 / days[b])

    def add(self, x: float, b: int) -> None:
        """One value in bin ``b`` (winsorised by the caller: an outlier counts as if it
        were at the threshold)."""
        if b != self.bin:
            self._fold()
            # Seen from its start only if it follows the bin before: the series' first
            # hour, or the one after a gap, is a part of an hour and would bias the bin.
            self.whole = self.bin >= 0 and b % HOURS == (self.bin + 1) % HOURS
            self.bin = b
        self.n += 1
        d = x - self.m
        self.m += d / self.n
        self.m2 += d * (x - self.m)

    STATE_LEN = 3 * BINS + 5

    def state(self) -> list[float]:
        """Everything it has learnt, as numbers (detector_state.py saves them)."""
        return [*self.mean, *self.spread, *self.days, float(self.bin), float(self.whole),
                float(self.n), self.m, self.m2]

    @classmethod
    def from_state(cls, v: list[float]) -> DailyProfile:
        """The profile ``state()`` described; ValueError if ``v`` cannot be one."""
        if len(v) != cls.STATE_LEN or not all(math.isfinite(x) for x in v):
            raise ValueError("not a daily profile")
        p = cls()
        p.mean, p.spread = v[:BINS], v[BINS:2 * BINS]
        days, (b, whole, n) = v[2 * BINS:3 * BINS], v[3 * BINS:3 * BINS + 3]
        if not all(d == int(d) and 0 <= d <= 255 for d in days) or min(p.spread) < 0 \
                or b != int(b) or not -1 <= b < BINS or n != int(n) or n < 0:
            raise ValueError("not a daily profile")
        p.days = bytearray(int(d) for d in days)
        p.bin, p.whole, p.n = int(b), bool(whole), int(n)
        p.m, p.m2 = v[-2], v[-1]
        return p

    def shift(self, delta: float) -> None:
        """The series moved to another level (a level shift): every bin moves with it."""
        self.mean = [m + delta for m in self.mean]
        self.m += delta

    def _fold(self) -> None:
        b, n = self.bin, self.n
        if b >= 0 and n and self.whole:
            std = math.sqrt(self.m2 / n)
            if not self.days[b]:
                self.mean[b], self.spread[b] = self.m, std
            else:
                gap = self.m - self.mean[b]
                self.mean[b] += ALPHA * gap
                self.spread[b] += ALPHA * (math.sqrt(std * std + gap * gap) - self.spread[b])
            if self.days[b] < 255:
                self.days[b] += 1
        self.n, self.m, self.m2 = 0, 0.0, 0.0
