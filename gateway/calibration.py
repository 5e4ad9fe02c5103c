"""A series' own score distribution, so its anomaly score means the same on every series.

The detector's raw score (a residual in units of the series' learnt scale) is Gaussian
only for a Gaussian series: a mains voltage held up by the 0.5 % accuracy floor scores far
lower, bursty power and a PV channel under clouds far higher, so the same raw score is
routine on one series and rare on another. ``ScoreTail`` keeps a histogram of the raw
scores a series has produced, on fixed edges (``EDGES``, in scales), with the sum of the
scores in each bin, and forgets by halving everything once it holds ``HISTORY`` scores.
``calibrated(s)`` is the share of the series' own scores below ``s``: interpolated within
a bin while at least ``MIN_TAIL`` scores lie at or above ``s``, and beyond that an
exponential tail fitted to the scores above the last edge that still has ``MIN_TAIL``
(the mean excess over it: the peaks-over-threshold estimate with shape 0). So on
event-free data about 1 % of a series' values score above 0.99, 0.1 % above 0.999,
whatever the series' unit, scale or shape. Pure arithmetic; memory: 2 x 18 numbers.
"""

from __future__ import annotations

import math
from bisect import bisect_right

EDGES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0,
         20.0, 25.0)
HISTORY = 2_000  # scores kept (then every count halves): days of readings
MIN_TAIL = 10.0  # scores at or above a point that make its empirical tail trustworthy
MIN_EXCESS = 0.02  # scales: the fitted tail's mean excess is at least this
MIN_SCORES = 100  # before this many, the Gaussian reading of the raw score


class ScoreTail:
    __slots__ = ("count", "n", "total")

    def __init__(self) -> None:
        self.count = [0.0] * (len(EDGES) + 1)  # bin k: [EDGES[k-1], EDGES[k])
        self.total = [0.0] * (len(EDGES) + 1)  # the sum of the scores in each bin
        self.n = 0.0

    STATE_LEN = 2 * (len(EDGES) + 1) + 1

    def state(self) -> list[float]:
        return [*self.count, *self.total, self.n]

    @classmethod
    def from_state(cls, v: list[float]) -> ScoreTail:
        """The history ``state()`` described; ValueError if ``v`` cannot be one."""
        k = len(EDGES) + 1
        if len(v) != cls.STATE_LEN or not all(math.isfinite(x) and x >= 0 for x in v) \
                or not v[-1] <= HISTORY or abs(sum(v[:k]) - v[-1]) > 1e-6 * (1 + v[-1]):
            raise ValueError("not a score history")
        t = cls()
        t.count, t.total, t.n = v[:k], v[k:2 * k], v[-1]
        return t

    def add(self, s: float) -> None:
        if not math.isfinite(s):
            return
        k = bisect_right(EDGES, s)
        self.count[k] += 1.0
        self.total[k] += s
        self.n += 1.0
        if self.n >= HISTORY:
            self.count = [c / 2 for c in self.count]
            self.total = [t / 2 for t in self.total]
            self.n /= 2

    def _at_or_above(self, s: float) -> float:
        k = bisect_right(EDGES, s)
        above = sum(self.count[k + 1:])
        lo = EDGES[k - 1] if k else 0.0
        if k == len(EDGES):  # the last, open bin: its scores' mean says where they lie
            c = self.count[k]
            mean = self.total[k] / c if c else lo
            return above + (c if s <= mean else 0.0)
        return above + self.count[k] * (EDGES[k] - s) / (EDGES[k] - lo)

    def calibrated(self, s: float) -> float:
        """The share of this series' scores below ``s``, on [0, 1]."""
        if s == math.inf:
            return 1.0
        if self.n < MIN_SCORES:
            return math.erf(s / math.sqrt(2.0))
        tail = self._at_or_above(s)
        if tail < MIN_TAIL:
            # The last edge below s with MIN_TAIL scores at or above it, and the mean
            # excess of those scores over it.
            j = bisect_right(EDGES, s) - 1
            while j >= 0 and (base := self._at_or_above(EDGES[j])) < MIN_TAIL:
                j -= 1
            edge = EDGES[j] if j >= 0 else 0.0
            base = self._at_or_above(edge) if j >= 0 else self.n
            k = j + 1  # the scores above the edge are in bins k...
            count = sum(self.count[k:])
            excess = sum(self.total[k:]) / count - edge if count else MIN_EXCESS
            tail = base * math.exp(-(s - edge) / max(excess, MIN_EXCESS))
        return min(1.0, max(0.0, 1.0 - tail / self.n))
