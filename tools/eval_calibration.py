"""``make eval``: is ``anomaly_score`` calibrated? Exceedance rates on the corpus' normal values.

A calibrated score q is exceeded by a share 1 - q of a series' normal values, whatever the
series' kind, unit or scale: that is what lets a backend pick one threshold for all. For
every series of the corpus (tools/eval_corpus.py) this runs the gateway's detector and, on
the values it judges after the first day (the daily profile's training) and outside the
labelled events (and a day's hour after each: the detector is still re-learning), counts
the values whose ``anomaly_score`` exceeds each q of ``QS``. The same scores read as a
Gaussian (the mapping before calibration.py) are counted alongside, for the before/after.
Reported per kind of series: the rate for each q, to compare with 1 - q.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from gateway.anomaly import AnomalyConfig, SeriesDetector
from tools.eval_corpus import DAY, Series

QS = (0.9, 0.99, 0.999)
SETTLE = 60  # points after a labelled event's end that are not counted


class Calibration:
    def __init__(self) -> None:
        self.values: Counter[str] = Counter()
        self.over: Counter[tuple[str, str, float]] = Counter()

    def add(self, series: Series, cfg: AnomalyConfig) -> None:
        det = SeriesDetector(cfg)
        events: set[int] = set()
        for lab in series.labels:
            events.update(range(lab.start, lab.end + SETTLE))
        period = series.period_s
        for i, x in enumerate(series.values):
            det.observe(x, period, i * period)
            if i < DAY or i in events or det.judged < 0:
                continue
            s = det.score
            scores = {"calibrated": det.anomaly_score(),
                      "gaussian": 1.0 if s == math.inf else math.erf(s / math.sqrt(2.0))}
            for kind in (series.kind, "all"):
                self.values[kind] += 1
                for how, p in scores.items():
                    for q in QS:
                        self.over[kind, how, q] += p > q

    def result(self) -> dict[str, Any]:
        return {kind: {"values": n, **{how: {str(q): round(self.over[kind, how, q] / n, 5)
                                              for q in QS}
                                       for how in ("gaussian", "calibrated")}}
                for kind, n in sorted(self.values.items())}


def table(result: dict[str, Any]) -> str:
    width = 10 * len(QS)
    qs = "".join(f"{f'>{q}':>10}" for q in QS)
    lines = ["anomaly_score calibration: the share of normal values scoring above q "
             "(calibrated: 1 - q)",
             f"{'':<24}{'gaussian (before)':>{width}}  |{'calibrated (after)':>{width}}",
             f"{'kind':<16}{'values':>8}{qs}  |{qs}",
             f"{'1 - q':<24}" + "".join(f"{1 - q:>10.4g}" for q in QS) + "  |"
             + "".join(f"{1 - q:>10.4g}" for q in QS)]
    for kind, row in result.items():
        lines.append(f"{kind:<16}{row['values']:>8}"
                     + "".join(f"{row['gaussian'][str(q)]:>10}" for q in QS) + "  |"
                     + "".join(f"{row['calibrated'][str(q)]:>10}" for q in QS))
    return "\n".join(lines)
