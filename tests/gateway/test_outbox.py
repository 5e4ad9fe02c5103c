"""gateway/outbox.py on a real store: what the uplink sends next and when it deletes.

The drain rate meters a backlog, a partial telemetry batch waits for batch_delay_ms, a
rewind after a lost connection sends the unacknowledged again but never a delivered
record, and delivered records are deleted in bulk.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.config import UplinkSection
from gateway.outbox import Outbox
from gateway.store import Store
from gateway.store_rows import ALARM, TELEMETRY, Record, now_ms


def filled(tmp_path: Path, n: int, priority: int = TELEMETRY, age_ms: int = 0) -> Store:
    store = Store(tmp_path / "s.db", 10**8, 3600)
    store.commit([Record(priority, "m", 1, s, b"{}", now_ms() - age_ms) for s in range(n)])
    return store


def test_a_backlog_drains_at_the_configured_rate(tmp_path: Path) -> None:
    store = filled(tmp_path, 500, age_ms=10_000)
    out = Outbox(store, UplinkSection(batch_size=50, drain_rate=100, batch_delay_ms=0))
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 1.0:
        limit = out.limit()
        if not limit:
            time.sleep(0.005)
            continue
        rows = out.telemetry(limit)
        assert rows
        out.sent(rows)
        sent += len(rows)
    # One batch at once (the bucket starts with batch_size tokens), then 100/s: about 150
    # in the first second, not the 500 waiting.
    assert 120 <= sent <= 200, sent
    store.close()


def test_a_partial_batch_waits_then_goes(tmp_path: Path) -> None:
    store = filled(tmp_path, 3)
    out = Outbox(store, UplinkSection(batch_size=50, batch_delay_ms=300))
    assert out.telemetry(50) == [] and out.batch_due is not None  # waits to fill
    time.sleep(0.35)
    rows = out.telemetry(50)
    assert rows is not None and [r.seq for r in rows] == [0, 1, 2] and out.batch_due is None
    out.sent(rows)
    assert out.telemetry(50) is None  # caught up
    store.close()


def test_rewind_resends_the_unacknowledged_and_never_a_delivered_record(
    tmp_path: Path
) -> None:
    store = filled(tmp_path, 10, age_ms=10_000)
    store.commit([Record(ALARM, "m", 1, 99, b"{}", now_ms())])
    out = Outbox(store, UplinkSection(batch_size=4, batch_delay_ms=0))
    assert [r.seq for r in out.alarms(4)] == [99]
    first = out.telemetry(4)
    second = out.telemetry(4)
    assert first is not None and [r.seq for r in first] == [0, 1, 2, 3]
    assert second == first  # nothing marked sent: the same batch again
    out.sent(first)
    second = out.telemetry(4)
    assert second is not None and [r.seq for r in second] == [4, 5, 6, 7]
    out.sent(second)
    out.delivered([r.id for r in first])  # only the first batch was acknowledged
    out.rewind()  # the connection was lost
    again = out.telemetry(4)
    assert again is not None and [r.seq for r in again] == [4, 5, 6, 7]
    assert [r.seq for r in store.fetch(TELEMETRY, 0, 100)] == list(range(4, 10))  # deleted
    store.close()


def test_delivered_records_are_deleted_in_bulk(tmp_path: Path) -> None:
    store = filled(tmp_path, 20, age_ms=10_000)
    out = Outbox(store, UplinkSection(batch_size=20, batch_delay_ms=0))
    rows = out.telemetry(20)
    assert rows is not None
    out.sent(rows)
    out.delivered([r.id for r in rows[:10]])
    out.flush()  # within FLUSH_EVERY_S of the start: waits for more
    assert len(store.fetch(TELEMETRY, 0, 100)) == 20
    out.delivered([r.id for r in rows[10:]])
    out.flush(force=True)
    assert store.fetch(TELEMETRY, 0, 100) == []
    store.close()
