"""Online anomaly detection per series, in constant memory: robust EWMA, rate, stuck value.

One ``SeriesDetector`` per (device, channel, quantity) keeps five numbers. A robust EWMA
tracks the level (mean) and the mean absolute deviation; the score of a new value is its
distance from the level in units of 1.4826 x deviation (the MAD-to-sigma factor), so one
spike does not inflate the scale the way a variance would. Outliers update the estimate
only a little (winsorised at the threshold), so a long excursion is still seen as one.
No verdict during the warm-up. A value repeated exactly for ``stuck_after`` periods (a
sensor that died showing its last value) is reported as stuck. Every finding carries its
evidence: value, baseline, deviation and score.
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

    def observe(self, x: float, dt_s: float) -> list[Finding]:
        c = self.cfg
        out: list[Finding] = []
        if self.last is not None and x == self.last:
            self.repeats += 1
            if self.repeats + 1 >= c.stuck_after and not self.stuck:
                self.stuck = True
                out.append(Finding("stuck_value", x, x, float(self.repeats + 1)))
        else:
            self.repeats = 0
            self.stuck = False
        if self.last is not None and c.max_rate is not None and dt_s > 0:
            rate = abs(x - self.last) / dt_s
            if rate > c.max_rate:
                out.append(Finding("rate_of_change", x, self.last, rate / c.max_rate))
        self.last = x
        if self.n == 0:
            self.level, self.dev = x, 0.0
        scale = MAD_TO_SIGMA * self.dev
        score = abs(x - self.level) / scale if scale > 0 else 0.0
        if self.n >= c.warmup and score > c.sensitivity:
            out.append(Finding("anomaly", x, self.level, score))
        # Winsorise: an outlier moves the estimate as if it were at the threshold.
        bound = c.sensitivity * scale if scale > 0 else abs(x - self.level)
        clipped = self.level + max(-bound, min(bound, x - self.level)) if self.n else x
        self.level += c.alpha * (clipped - self.level)
        self.dev += c.alpha * (abs(clipped - self.level) - self.dev)
        self.n += 1
        return out
