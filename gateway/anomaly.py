"""Online anomaly detection per series, in constant memory: robust EWMA, rate, stuck value.

One ``SeriesDetector`` per (device, channel, quantity) keeps five numbers. A robust EWMA
tracks the level (mean) and the mean absolute deviation; the score of a new value is its
distance from the level in units of 1.4826 x deviation (the MAD-to-sigma factor), so one
spike does not inflate the scale the way a variance would. Outliers update the estimate
only a little (winsorised at the threshold), so a long excursion is still seen as one.
No verdict during the warm-up. An excursion is one alarm: raised when the score first
exceeds the sensitivity, cleared when it falls below 80 % of it. The scale has a floor of
0.5 % of the level (and one wire unit), so a near-constant series (a steady 230.0 V) does
not turn half a volt into an alarm. With a ``max_rate`` (per second, in the series' unit),
a step faster than that raises ``rate_of_change`` and the first step within it clears it.
A non-zero value repeated exactly for ``stuck_after``
periods (a sensor that died showing its last value) is stuck until the value changes;
zero repeats are not stuck: an idle circuit or PV at night reads exactly 0. Every finding
carries its evidence: value, baseline and score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "anomaly" | "rate_of_change" | "stuck_value"
    value: float
    baseline: float
    score: float
    state: str = "raised"  # or "cleared"


@dataclass
class AnomalyConfig:
    sensitivity: float = 4.0  # score above which a value is anomalous
    warmup: int = 30  # observations before any verdict
    alpha: float = 0.05  # EWMA weight of a new value
    max_rate: float | None = None  # max change per second, in the series' unit
    stuck_after: int = 30  # identical consecutive values


@dataclass(slots=True)
class SeriesDetector:
    cfg: AnomalyConfig
    n: int = 0
    level: float = 0.0
    dev: float = 0.0
    last: float | None = None
    repeats: int = 0
    stuck: bool = field(default=False)
    anomalous: bool = False
    fast: bool = False  # rate_of_change raised

    def observe(self, x: float, dt_s: float) -> list[Finding]:
        c = self.cfg
        out: list[Finding] = []
        if self.last is not None and x == self.last and x != 0:
            self.repeats += 1
            if self.repeats + 1 >= c.stuck_after and not self.stuck:
                self.stuck = True
                out.append(Finding("stuck_value", x, x, float(self.repeats + 1)))
        else:
            if self.stuck:
                out.append(Finding("stuck_value", x, self.last or 0.0, 0.0, "cleared"))
            self.repeats = 0
            self.stuck = False
        if self.last is not None and c.max_rate and dt_s > 0:
            score = abs(x - self.last) / dt_s / c.max_rate
            if score > 1 and not self.fast:
                self.fast = True
                out.append(Finding("rate_of_change", x, self.last, score))
            elif score <= 1 and self.fast:
                self.fast = False
                out.append(Finding("rate_of_change", x, self.last, score, "cleared"))
        self.last = x
        if self.n == 0:
            self.level, self.dev = x, 0.0
        scale = max(MAD_TO_SIGMA * self.dev, 0.005 * abs(self.level), 1.0)
        score = abs(x - self.level) / scale if self.n else 0.0
        if self.n >= c.warmup:
            if not self.anomalous and score > c.sensitivity:
                self.anomalous = True
                out.append(Finding("anomaly", x, self.level, score))
            elif self.anomalous and score < 0.8 * c.sensitivity:
                self.anomalous = False
                out.append(Finding("anomaly", x, self.level, score, "cleared"))
        # Winsorise: an outlier moves the estimate as if it were at the threshold.
        bound = c.sensitivity * scale
        clipped = self.level + max(-bound, min(bound, x - self.level)) if self.n else x
        self.level += c.alpha * (clipped - self.level)
        self.dev += c.alpha * (abs(clipped - self.level) - self.dev)
        self.n += 1
        return out
