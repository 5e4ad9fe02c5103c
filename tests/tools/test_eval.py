"""``make eval``'s parts: the seeded corpus, the scoring, and a small run end to end."""

from __future__ import annotations

import json
from pathlib import Path

from tools import eval_balance, evaluate
from tools.eval_corpus import EVENTS, KINDS, Label, corpus, make_series
from tools.eval_score import score, summarise


def test_scoring_counts_detections_delays_and_false_alarms() -> None:
    labels = [Label("spike", 10, 13), Label("level_shift", 50, 80), Label("drift", 200, 300)]
    tallies = score([11, 12, 60, 100, 150], labels, days=0.5)
    assert (tallies["spike"].detected, tallies["spike"].delays) == (1, [1])
    assert tallies["spike"].alarms == 2  # an event should alarm once: both count
    assert (tallies["level_shift"].detected, tallies["level_shift"].delays) == (1, [10])
    assert tallies["drift"].detected == 0
    assert tallies["false"].false_alarms == 2  # 100 and 150 are in no window
    rows = summarise([tallies])
    assert rows["all"] == {"events": 3, "recall": 0.667, "precision": 0.6, "delay": 5.5,
                           "false_alarms": 2, "false_per_day": 4.0}
    assert rows["drift"]["recall"] == 0.0 and rows["drift"]["delay"] is None


def test_the_corpus_is_seeded_labelled_and_covers_every_kind() -> None:
    a, b = make_series("pv", 3), make_series("pv", 3)
    assert a.values == b.values and a.labels == b.labels
    assert make_series("pv", 4).values != a.values
    series = corpus(range(2), days=2.0)
    assert sorted({s.kind for s in series}) == sorted(KINDS) and len(series) == 2 * len(KINDS)
    for s in series:
        assert len(s.values) == 2 * 1440 and s.days == 2.0
        assert s.labels and all(1440 <= lab.start < lab.end <= len(s.values)
                                for lab in s.labels)  # the first day is left normal
        assert {lab.event for lab in s.labels} <= set(EVENTS)
    pv = make_series("pv", 0)
    assert min(pv.values) == 0.0 and pv.values[:300].count(0.0) > 250  # nights are 0


def test_a_small_evaluation_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert evaluate.main(["--part", "tune", "--days", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["series"] == 10 * len(KINDS) and result["points"] == 10 * len(KINDS) * 2880
    assert set(result["by_kind"]) == set(KINDS)
    assert set(result["by_event"]) <= {*EVENTS, "all"} and "all" in result["by_event"]
    assert 0 < result["us_per_point"] < 100
    balance = result["balance"]
    assert balance["quiet_weeks"] == 10 and balance["quiet_false_alarms"] == 0
    assert balance["quiet_legacy_windows_alarmed"] > 0  # the unsigned balance's noise
    full = balance["thefts"]["100% of one meter's load"]
    assert full["runs"] == 10 and full["found_within_2_windows"] >= 0.5


def test_the_balance_names_the_thief_and_stays_quiet_without_one() -> None:
    """One seeded feeder through gateway.balance: a week without theft raises nothing; a
    meter that stops counting its load is flagged, and named first."""
    assert eval_balance.run(3, 7.0)["false"] == 0
    theft = eval_balance.run(3, 4.0, bypass=1.0)
    assert theft["found"] and theft["named"] and theft["false"] == 0
