"""The SQLite store and the de-duplicator: durability, bounds, recovery, identity."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dedup import WINDOW, Deduplicator
from gateway.store import Store
from gateway.store_file import StoreError
from gateway.store_rows import ALARM, TELEMETRY, Mark, Record


def rec(seq: int, priority: int = TELEMETRY, size: int = 100, device: str = "d1") -> Record:
    return Record(priority, device, 1, seq, bytes(size))


def test_commit_fetch_delete_alarms_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", max_bytes=10**6, max_age_s=3600)
    s.commit([rec(0), rec(1), rec(2, ALARM)], {"d1": Mark(1, 2, 0b111)})
    assert [r.seq for r in s.fetch(ALARM, 0, 10)] == [2]
    tele = s.fetch(TELEMETRY, 0, 10)
    assert [r.seq for r in tele] == [0, 1]
    assert [r.seq for r in s.fetch(TELEMETRY, tele[0].id, 10)] == [1]
    s.delete([tele[0].id])
    assert s.depth()["telemetry"] == 1 and s.bytes == 200
    s.commit([], {"d2": Mark(1, 70, (1 << 64) - 1)})  # a full window: bit 63 set
    s.close()
    again = Store(tmp_path / "s.db", max_bytes=10**6, max_age_s=3600)
    assert again.bytes == 200
    assert again.marks() == {"d1": Mark(1, 2, 0b111), "d2": Mark(1, 70, (1 << 64) - 1)}


def test_byte_bound_drops_oldest_telemetry_never_alarms(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", max_bytes=1024 * 1024, max_age_s=3600)
    big = 100 * 1024
    s.commit([rec(0, ALARM, big)] + [rec(i, TELEMETRY, big) for i in range(1, 11)])
    assert s.bytes <= s.max_bytes
    left = [r.seq for r in s.fetch(TELEMETRY, 0, 100)]
    assert left == list(range(11 - len(left), 11))  # the newest survive
    assert [r.seq for r in s.fetch(ALARM, 0, 10)] == [0]  # the alarm is kept
    assert s.counters()["dropped_bytes"] == 10 - len(left)


def test_age_bound(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", max_bytes=10**6, max_age_s=60)
    old = 1_000_000  # 1970: far older than a minute
    s.commit([Record(TELEMETRY, "d", 1, 0, b"x", created_ms=old),
              Record(ALARM, "d", 1, 1, b"y", created_ms=old), rec(2)])
    assert [r.seq for r in s.fetch(TELEMETRY, 0, 10)] == [2]
    assert len(s.fetch(ALARM, 0, 10)) == 1 and s.counters()["dropped_age"] == 1


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    s = Store(path, max_bytes=10**6, max_age_s=60)
    (r,) = s.recoveries
    assert r.cause == "corrupt" and Path(r.moved_to).exists()
    s.commit([rec(0)])
    assert s.depth()["telemetry"] == 1


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create"):
        Store(blocker / "sub" / "s.db", max_bytes=10**6, max_age_s=60)


def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    """A writer process is SIGKILLed mid-stream: every batch it reported committed is there."""
    path = tmp_path / "s.db"
    code = textwrap.dedent(f"""
        import sys
        from gateway.store_rows import Record, Mark
        from gateway.store import Store
        s = Store({str(path)!r}, max_bytes=10**9, max_age_s=3600)
        for b in range(100000):
            s.commit([Record(1, "d", 1, b * 10 + i, bytes(200)) for i in range(10)],
                     {{"d": Mark(1, b * 10 + 9, 1)}})
            print(b, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 40:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    s = Store(path, max_bytes=10**9, max_age_s=3600)
    stored = {r.seq for r in s.fetch(TELEMETRY, 0, 10**6)}
    assert set(range((last + 1) * 10)) <= stored  # nothing acknowledged is lost
    assert s.marks()["d"].seq >= last * 10 + 9
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- de-duplication


def test_dedup_rules() -> None:
    d = Deduplicator()
    assert d.check("a", 1, 5).accept
    assert d.check("a", 1, 5).reason == "duplicate"
    v = d.check("a", 1, 9)
    assert v.accept and v.missing == 3
    late = d.check("a", 1, 7)
    assert late.accept and late.late
    assert d.check("a", 1, 7).reason == "duplicate"
    assert d.check("a", 1, 9 - WINDOW).reason == "stale"
    assert d.check("a", 0, 100).reason == "replayed"
    reboot = d.check("a", 2, 3)
    assert reboot.accept and reboot.missing == 3
    assert d.check("b", 7, 0).accept  # devices are independent


@given(st.lists(st.integers(0, 200), min_size=1, max_size=300))
@settings(max_examples=200)
def test_dedup_accepts_each_identity_once(seqs: list[int]) -> None:
    """Any arrival order with repeats: a seq is accepted exactly once if it first arrives
    within the window below the highest seq seen, and never again."""
    d = Deduplicator()
    seen: set[int] = set()
    high = -1
    for s in seqs:
        v = d.check("dev", 1, s)
        if s in seen:  # seen before: a duplicate, or "stale" once it left the window
            assert v.reason == ("duplicate" if s > high - WINDOW else "stale")
        elif high < 0 or s > high - WINDOW:
            assert v.accept, (s, high)
            seen.add(s)
        else:
            assert v.reason == "stale"
        high = max(high, s)
