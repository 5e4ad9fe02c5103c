"""Online anomaly detection per series, in constant memory: robust EWMA, daily profile, rate, stuck.

One ``SeriesDetector`` per (device, channel, quantity) keeps a handful of numbers. A robust
EWMA tracks the level (mean) and the mean absolute deviation; the score of a new value is
its distance from the level in units of 1.4826 x deviation (the MAD-to-sigma factor), so one
spike does not inflate the scale the way a variance would. Outliers update the estimate only
a little (winsorised at the threshold), so a long excursion is still seen as one. No verdict
during the warm-up. An excursion is one alarm: raised when the score first exceeds the
threshold, cleared when it falls below 80 % of it. The scale cannot collapse and has no
absolute floor, so the same series in mA or in MW alarms at the same points: it is at least
0.5 % of the level (a meter's accuracy class, so a steady 230.0 V does not turn half a volt
into an alarm) and the series' own quantisation step (the smallest change it has made, once
it has changed eight times: a mostly-zero counter's 4096-byte steps are its resolution, one
large first change is not). Each series has a false-alarm budget (``budget_per_day``): a
series that raises more than that in about a day (bursty, heavy-tailed power) raises its own
threshold by half each time, and the rise decays back over a day. ``make eval`` measures all
of this on a labelled corpus. With a ``max_rate`` (per second, in the series' unit), a step
faster than that raises ``rate_of_change`` and the first step within it clears it. A
non-zero value repeated exactly for ``stuck_after`` periods (a sensor that died showing its
last value) is stuck until the value changes; zero repeats are not stuck: an idle circuit or
PV at night reads exactly 0; a stuck series' repeats are neither judged nor learnt.

A timed series (``observe`` given the value's time) also keeps a daily profile
(seasonal.py: a usual value and spread per hour of the day, for weekdays and weekends
apart). Its first day (``learn_s``) is its warm-up: nothing is judged before the profile
has seen each hour once (a morning peak on an installation's first day is no anomaly).
Once the profile knows the hour, the baseline and scale are the profile's, so an evening
peak is normal and a flat evening is not, and only then are level shifts judged. An hour
the profile still does not know after that (the first day had a gap) is judged with a
threshold ``UNTRAINED_GAIN`` times higher and a value close to a normal previous one is
not an anomaly (the recent level lags a daily ramp). A series that was exactly 0 for
``OFF_SHARE`` of its last day has an off state (PV at night, a sparse counter): a fall
towards 0 is no anomaly, zeros do not teach the level, and its warm-up counts non-zero
values. Every finding carries its evidence: value, baseline and score; ``anomaly_score``
maps the last score onto [0, 1] by the series' own history of scores (calibration.py),
so a threshold on it means the same on every series. ``state``/``from_state`` carry all
of it across a gateway restart (detector_state.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.calibration import ScoreTail
from gateway.seasonal import DAY_S, DailyProfile

MAD_TO_SIGMA = 1.4826
CUSUM_K = 0.5  # scales a point may stray before it counts toward a shift
CUSUM_H = 40.0  # accumulated scales that make a shift (tuned on make eval's tune seeds)
CUSUM_CLIP = 2.0  # a residual counts at most this many scales: about 27 points make a shift
STEP_CHANGES = 8  # one large change is no quantisation step: the smallest of 8 may be
OFF_SHARE = 0.05  # a series whose last day was this much exact 0 has an "off" state
# A timed series judged before its daily profile knows the hour (its first days, after a
# restart) is judged against its recent level, which lags a daily ramp (a morning peak, a
# sunrise): only an excursion this many times the threshold is an anomaly then.
UNTRAINED_GAIN = 2.0


_INTS = ("n", "repeats", "changes", "on")
_BOOLS = ("stuck", "anomalous", "fast", "calm", "seasonal")
_SCALARS = ("n", "level", "dev", "last", "repeats", "stuck", "anomalous", "fast", "step",
            "changes", "gain", "raised", "up", "down", "score", "zeros", "on", "calm",
            "judged", "seasonal", "born")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "anomaly" | "rate_of_change" | "stuck_value" | "level_shift"
    value: float
    baseline: float
    score: float
    state: str = "raised"  # or "cleared"; "event" for a level_shift (it happens once)


@dataclass
class AnomalyConfig:
    sensitivity: float = 4.0  # score above which a value is anomalous
    warmup: int = 30  # observations before any verdict
    alpha: float = 0.05  # EWMA weight of a new value
    max_rate: float | None = None  # max change per second, in the series' unit
    stuck_after: int = 30  # identical consecutive values
    # Anomaly alarms a series may raise per day before its threshold rises (a series whose
    # normal life has bursts teaches the detector its own tail); the rise decays back.
    budget_per_day: float = 2.0
    # A timed series' first seconds are only learnt, not judged (its daily profile's
    # first day: a morning peak on an installation's first day is no anomaly).
    learn_s: float = DAY_S


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
    step: float = 0.0  # the smallest change seen between two values: its quantisation
    changes: int = 0  # changes seen (up to STEP_CHANGES): the step is known after those
    gain: float = 1.0  # the threshold's multiplier, learnt from the series' own tail
    raised: float = 0.0  # anomaly alarms of about the last day (decaying count)
    up: float = 0.0  # CUSUM of the residuals above the level (in scale units)...
    down: float = 0.0  # ...and below it
    score: float = 0.0  # the last value's distance from its baseline, in scales
    zeros: float = 0.0  # share of about the last day's values that were exactly 0
    on: int = 0  # values that were not 0, up to the warm-up: an off series' own warm-up
    calm: bool = False  # the last value was judged, and normal
    profile: DailyProfile | None = None  # made with the first timed value
    # The scores it has judged against its daily profile, and against its recent level.
    tails: tuple[ScoreTail, ScoreTail] = field(default_factory=lambda: (ScoreTail(),
                                                                       ScoreTail()))
    judged: float = -1.0  # the last judged score, learnt with the next value
    seasonal: bool = False  # the last value was judged against the daily profile
    born: float | None = None  # the time of its first timed value (Unix s)

    def observe(self, x: float, dt_s: float, t_s: float | None = None) -> list[Finding]:
        """Judge one value; ``t_s`` (its time, Unix seconds) enables the daily profile."""
        c = self.cfg
        out: list[Finding] = []
        was_stuck = self.stuck
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
        previous, self.last = self.last, x
        if self.judged >= 0:  # after anomaly_score() has read the value before it
            self.tails[self.seasonal].add(self.judged)
            self.judged = -1.0
        if was_stuck and self.stuck:  # a dead IC's repeats: nothing to judge or learn
            return out
        if self.n == 0:
            self.level, self.dev = x, 0.0
        if x != 0 and self.on < c.warmup:
            if not self.on:  # its first value when on: the on-statistics start there
                self.level, self.dev = x, 0.0
            self.on += 1
        # The scale cannot collapse: it is at least the series' own quantisation step and
        # 0.5 % of its level (a meter's accuracy class), never an absolute constant, so a
        # flat or sparse series, and one in mA or in MW, are judged alike.
        step = self.step if self.changes >= STEP_CHANGES else 0.0
        expected = self.level
        scale = max(MAD_TO_SIGMA * self.dev, 0.005 * abs(expected), step)
        b, seasonal, borrowed = -1, False, False
        if t_s is not None:
            prof = self.profile
            if prof is None:
                prof = self.profile = DailyProfile()
                self.born = t_s
            b = prof.bin_of(t_s)
            usual = prof.expect(b)
            if usual is not None:  # this hour of the day is known: judge against it
                expected, seasonal = usual[0], True
                # Its first weekend is judged by its weekdays' hours (seasonal.py), as
                # before weekends had their own; the value, unclipped, teaches its own.
                borrowed = prof.borrowed(b)
                scale = max(usual[1], 0.005 * abs(expected), step)
        residual = x - expected
        off = self.zeros >= OFF_SHARE  # exact zeros are part of this series' life
        if off and (x == 0 or (x * expected > 0 and abs(x) < abs(expected))):
            residual = 0.0  # towards off (PV under a cloud, at dusk) is no anomaly
        if b >= 0 and not seasonal and self.calm and previous is not None and residual:
            # Before the profile knows this hour, the recent level lags a daily ramp
            # (a sunrise, a morning peak), which moves little from one value to the
            # next; a spike or a step moves far from both (from a previous value that
            # was judged normal: one in the warm-up or an excursion tells nothing).
            step_away = x - previous
            if abs(step_away) < abs(residual):
                residual = step_away
        if not self.n:
            score = 0.0
        elif scale:
            score = abs(residual) / scale
        else:  # a series that never changed until now
            score = 0.0 if not residual else float("inf")
        self.score = score
        if dt_s > 0:
            self.zeros += min(1.0, dt_s / DAY_S) * ((x == 0) - self.zeros)
            if self.raised:
                self.raised *= math.exp(-dt_s / DAY_S)
                self.gain = max(1.0, self.gain * math.exp(-dt_s / DAY_S))
        threshold = c.sensitivity * self.gain
        if b >= 0 and not seasonal:
            threshold *= UNTRAINED_GAIN
        judged = self.n >= c.warmup and (self.on >= c.warmup or not off)
        if b >= 0 and not seasonal and t_s is not None and self.born is not None \
                and t_s - self.born < c.learn_s:
            judged = False  # its first day: nothing known of its daily life yet
        if judged:
            self.judged, self.seasonal = score, seasonal
            if not self.anomalous and score > threshold:
                self.anomalous = True
                out.append(Finding("anomaly", x, expected, score))
                self.raised += 1
                if self.raised > c.budget_per_day:  # its normal tail is wider: learn it
                    self.gain *= 1.5
            elif self.anomalous and score < 0.8 * threshold:
                self.anomalous = False
                out.append(Finding("anomaly", x, expected, score, "cleared"))
        self.calm = judged and not self.anomalous
        # A timed series' shift is judged against its daily profile only: before the
        # profile knows this hour, a daily peak and a shift look alike.
        if judged and scale and score != float("inf") and (t_s is None or seasonal):
            out += self._change_point(x, expected, residual / scale)
        if previous is not None and x != previous:  # learnt after judging this change
            change = abs(x - previous)
            self.step = change if not self.step else min(self.step, change)
            self.changes = min(STEP_CHANGES, self.changes + 1)
        # Winsorise: an outlier moves the estimates as if it were at the threshold.
        bound = c.sensitivity * scale
        clipped = expected + max(-bound, min(bound, x - expected)) if self.n else x
        if self.profile is not None and b >= 0:
            # Before it knows the hour, the recent level is no reference to clip against.
            self.profile.add(clipped if seasonal and not borrowed else x, b)
        if not (off and x == 0):  # an off series' level and spread are its on-values'
            if seasonal:
                clipped = self.level + max(-bound, min(bound, x - self.level))
            self.level += c.alpha * (clipped - self.level)
            self.dev += c.alpha * (abs(clipped - self.level) - self.dev)
        self.n += 1
        return out

    def state(self) -> list[float]:
        """Everything it has learnt, as numbers, for detector_state.py to save across a
        restart: a gateway restarted without it would judge a day with no profile."""
        out = [float("nan") if v is None else float(v)
               for v in (getattr(self, name) for name in _SCALARS)]
        out.append(float(self.profile is not None))
        if self.profile is not None:
            out += self.profile.state()
        return out + self.tails[0].state() + self.tails[1].state()

    @classmethod
    def from_state(cls, cfg: AnomalyConfig, v: list[float]) -> SeriesDetector:
        """The detector ``state()`` described; ValueError if ``v`` cannot be one (a
        damaged file: every number is checked before it is used)."""
        k = len(_SCALARS)
        if len(v) <= k:
            raise ValueError("not a detector")
        det = cls(cfg)
        for name, x in zip(_SCALARS, v[:k], strict=True):
            if math.isnan(x) and name in ("last", "born"):
                continue
            if not math.isfinite(x) and not (name == "score" and x == math.inf):
                raise ValueError(f"detector {name}: {x}")
            if name in _INTS:
                if x != int(x) or x < 0:
                    raise ValueError(f"detector {name}: {x}")
                setattr(det, name, int(x))
            else:
                setattr(det, name, bool(x) if name in _BOOLS else x)
        rest, tail = v[k + 1:], ScoreTail.STATE_LEN
        if v[k] == 1.0:
            det.profile = DailyProfile.from_state(rest[:DailyProfile.STATE_LEN])
            rest = rest[DailyProfile.STATE_LEN:]
        elif v[k] != 0.0:
            raise ValueError("detector: profile flag")
        if len(rest) != 2 * tail:
            raise ValueError("detector: length")
        det.tails = (ScoreTail.from_state(rest[:tail]), ScoreTail.from_state(rest[tail:]))
        return det

    def anomaly_score(self) -> float:
        """The last value's score on [0, 1]: the share of this series' own judged values
        that scored lower (calibration.py; with an exponential tail beyond them), so about
        1 % of a series' normal values score above 0.99 whatever its unit, scale or shape,
        and a backend can pick one threshold for all. Until the series has a history, the
        Gaussian reading of the score."""
        return self.tails[self.seasonal].calibrated(self.score)

    def _change_point(self, x: float, expected: float, r: float) -> list[Finding]:
        """Two-sided CUSUM on the residual in scale units, each clipped to CUSUM_CLIP (an
        outlier, or a short excursion, is the spike path's, not a shift): a level that
        moved by more than CUSUM_K scales and stays is one ``level_shift`` event, after
        which the baseline (and the daily profile) restarts at the new level instead of
        alarming for every point. The series' threshold gain (its false-alarm budget)
        scales CUSUM_H too."""
        r = max(-CUSUM_CLIP, min(CUSUM_CLIP, r))
        self.up = max(0.0, self.up + r - CUSUM_K)
        self.down = max(0.0, self.down - r - CUSUM_K)
        if max(self.up, self.down) <= CUSUM_H * self.gain:
            return []
        statistic = max(self.up, self.down)
        if self.profile is not None:
            self.profile.shift(x - expected)
        self.level, self.up, self.down = x, 0.0, 0.0
        out = []
        if self.anomalous:  # the excursion was this shift: it ends as the baseline moves
            self.anomalous = False
            out.append(Finding("anomaly", x, expected, 0.0, "cleared"))
        out.append(Finding("level_shift", x, expected, round(statistic, 2), "event"))
        return out
