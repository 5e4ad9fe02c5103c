"""Scoring for ``make eval``: alarms against labelled windows, per event type.

A series' alarms are the indices where a detector *raised* something. A labelled event
``[start, end)`` is detected when an alarm falls in it; its delay is the first such
alarm's distance from ``start`` (points). An alarm in no window is a false alarm. From
those, per event type and in all:

- ``recall``: detected events / events;
- ``precision``: alarms inside a window / all alarms (several alarms for one event count
  against it: an event should alarm once);
- ``delay``: the median delay of detected events, in points;
- ``false_per_day``: false alarms per series-day (a device-day for a meter's channel).

Pure functions over plain lists; tools/evaluate.py runs the detectors.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tools.eval_corpus import Label


@dataclass
class Tally:
    events: int = 0
    detected: int = 0
    alarms: int = 0  # all alarms attributed to this tally
    true_alarms: int = 0  # alarms inside a labelled window
    false_alarms: int = 0
    days: float = 0.0
    delays: list[int] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.events += other.events
        self.detected += other.detected
        self.alarms += other.alarms
        self.true_alarms += other.true_alarms
        self.false_alarms += other.false_alarms
        self.days += other.days
        self.delays += other.delays

    def row(self) -> dict[str, float | int | None]:
        return {
            "events": self.events,
            "recall": round(self.detected / self.events, 3) if self.events else None,
            "precision": round(self.true_alarms / self.alarms, 3) if self.alarms else None,
            "delay": statistics.median(self.delays) if self.delays else None,
            "false_alarms": self.false_alarms,
            "false_per_day": round(self.false_alarms / self.days, 2) if self.days else None,
        }


def score(alarms: list[int], labels: list[Label], days: float) -> dict[str, Tally]:
    """Tallies per event type of one series, and "false" for the alarms in no window."""
    out: dict[str, Tally] = {}
    inside: set[int] = set()
    for lab in labels:
        t = out.setdefault(lab.event, Tally())
        hits = [a for a in alarms if lab.start <= a < lab.end]
        t.events += 1
        t.alarms += len(hits)
        t.true_alarms += len(hits)
        if hits:
            t.detected += 1
            t.delays.append(hits[0] - lab.start)
        inside.update(hits)
    false = Tally(days=days)
    false.false_alarms = false.alarms = sum(1 for a in alarms if a not in inside)
    out["false"] = false
    return out


def summarise(per_series: list[dict[str, Tally]]) -> dict[str, dict[str, float | int | None]]:
    """Rows per event type and "all": events, recall, precision, delay, false alarms."""
    totals: dict[str, Tally] = {}
    for tallies in per_series:
        for name, t in tallies.items():
            totals.setdefault(name, Tally()).add(t)
    everything = Tally()
    for t in totals.values():
        everything.add(t)
    rows = {name: t.row() for name, t in sorted(totals.items()) if name != "false"}
    rows["all"] = everything.row()
    return rows
