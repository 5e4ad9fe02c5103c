"""``make eval``: the edge detectors on a labelled corpus; a table on stdout, JSON in build/.

The corpus (tools/eval_corpus.py) is generated from seeds, so a run is repeatable: seeds
0-9 are for tuning, 10-29 for the report (``--part tune|report``), and a change to a
detector is judged on the report part it was not tuned on. Each series goes through the
gateway's own ``gateway.anomaly.SeriesDetector`` with the configuration the gateway
ships (``[checks]`` defaults), as the edge checks run it on one channel's quantity;
``anomaly``, ``rate_of_change`` and ``stuck_value`` raises all count as alarms, since a
backend sees each as one. Scoring: tools/eval_score.py. The cost per point is measured
over the whole run (wall time / points). Whether ``anomaly_score`` is calibrated is
measured on the same series (tools/eval_calibration.py). Then the feeder energy balance on the fleet
simulator's households: quiet weeks and seeded thefts (tools/eval_balance.py). Last, the
whole edge pipeline (gateway.checks) on simulated feeders: quiet weeks, and labelled
sags, swells, over-currents, stuck ICs, thefts, dropouts and outages (tools/eval_fleet.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

from gateway.anomaly import AnomalyConfig, SeriesDetector
from gateway.checks import anomaly_config
from gateway.config import ChecksSection
from tools import eval_balance, eval_fleet
from tools.eval_calibration import Calibration
from tools.eval_calibration import table as calibration_table
from tools.eval_corpus import KINDS, Series, corpus
from tools.eval_score import Tally, score, summarise

PARTS = {"tune": range(0, 10), "report": range(10, 30)}


def shipped_config() -> AnomalyConfig:
    """The anomaly settings the gateway runs with by default ([checks]; the rate limit is
    off by default), built by the edge checks' own function."""
    return anomaly_config(ChecksSection())


def alarms_of(series: Series, cfg: AnomalyConfig) -> tuple[list[int], float]:
    """Indices where the detector raised something; seconds it took."""
    det = SeriesDetector(cfg)
    raised: list[int] = []
    t0 = time.perf_counter()
    period = series.period_s
    for i, x in enumerate(series.values):
        if any(f.state in ("raised", "event") for f in det.observe(x, period, i * period)):
            raised.append(i)
    return raised, time.perf_counter() - t0


def evaluate(seeds: range, days: float = 3.0) -> dict[str, Any]:
    cfg = shipped_config()
    per_series: list[dict[str, Tally]] = []
    per_kind: dict[str, list[dict[str, Tally]]] = {k: [] for k in KINDS}
    points, seconds = 0, 0.0
    calibration = Calibration()
    for s in corpus(seeds, days):
        raised, took = alarms_of(s, cfg)
        tallies = score(raised, s.labels, s.days)
        per_series.append(tallies)
        per_kind[s.kind].append(tallies)
        points += len(s.values)
        seconds += took
        calibration.add(s, cfg)
    return {
        "detector": "gateway.anomaly.SeriesDetector (shipped defaults)",
        "series": len(per_series),
        "points": points,
        "us_per_point": round(seconds / points * 1e6, 2) if points else None,
        "by_event": summarise(per_series),
        "by_kind": {k: summarise(v)["all"] for k, v in per_kind.items()},
        "calibration": calibration.result(),
    }


def table(result: dict[str, Any]) -> str:
    head = f"{'':<16}{'events':>7}{'recall':>8}{'precision':>10}{'delay':>7}" \
           f"{'false':>7}{'false/day':>10}"
    lines = [f"{result['detector']}: {result['series']} series, {result['points']} points, "
             f"{result['us_per_point']} us/point", head]
    for section in ("by_event", "by_kind"):
        lines.append(f"-- {section.replace('_', ' ')}")
        for name, row in result[section].items():
            cells = [row["events"], row["recall"], row["precision"], row["delay"],
                     row["false_alarms"], row["false_per_day"]]
            shown = ["-" if c is None else str(c) for c in cells]
            lines.append(f"{name:<16}{shown[0]:>7}{shown[1]:>8}{shown[2]:>10}{shown[3]:>7}"
                         f"{shown[4]:>7}{shown[5]:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    p = argparse.ArgumentParser(prog="evaluate", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--part", choices=sorted(PARTS), default="report",
                   help="seeds to run: tune (0-9) or report (10-29, the default)")
    p.add_argument("--days", type=float, default=3.0, help="days per series (default 3)")
    p.add_argument("--json", default="build/eval.json", help="where to write the result")
    p.add_argument("--fleet", action=argparse.BooleanOptionalAction, default=True,
                   help="run the whole pipeline on simulated feeders too (about 2 minutes)")
    args = p.parse_args(argv)
    result = evaluate(PARTS[args.part], args.days)
    result["part"] = args.part
    result["balance"] = eval_balance.evaluate(PARTS[args.part])
    if args.fleet:
        result["fleet"] = eval_fleet.evaluate(PARTS[args.part])
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(table(result), file=out)
    print(calibration_table(result["calibration"]), file=out)
    print(eval_balance.table(result["balance"]), file=out)
    if args.fleet:
        print(eval_fleet.table(result["fleet"]), file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
