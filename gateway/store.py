"""The durable store-and-forward queue: one SQLite file in WAL mode.

Everything the gateway has accepted lives here until the cloud broker acknowledged it.
Design:

- ``commit(records, marks)`` writes a batch of records *and* the devices' de-duplication
  marks in one transaction with ``synchronous=FULL`` (WAL fsync at commit), so once it
  returns the batch survives SIGKILL and power loss, and a frame is never stored without
  its mark or marked without being stored. Only then may ingest acknowledge the frames.
- Every record carries a CRC-32 over its identity and body. ``fetch`` checks it: a record
  the medium has damaged is moved to the ``quarantine`` table and counted, never sent and
  never fatal; ``take_events`` hands what was quarantined to the alarm path.
- Records have a priority (0 = alarm, 1 = telemetry). ``fetch`` returns alarms first;
  ``delete`` removes records once their PUBACK arrived.
- The store is bounded by bytes and by age. Over a bound, the oldest *telemetry* is dropped
  first and alarms never; every dropped record is counted (persistently) by reason.
- Opening never trusts the file (store_file.py): a damaged store is moved aside and a new
  one holds what could be salvaged; ``recoveries`` says what happened, for the alarm. A
  store that breaks while running (SQLite reports it malformed) is replaced the same way
  and the failed operation is tried once more on the new file. Disk full and other I/O
  failures are ``StoreError``: the caller retries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from gateway.store_file import (
    Recovery,
    StoreError,
    StoreFile,
    record_crc,
    record_intact,
)
from gateway.store_rows import (
    ALARM,
    TELEMETRY,
    Mark,
    Record,
    Stored,
    now_ms,
    signed64,
    storable,
    window_bytes,
)

log = logging.getLogger(__name__)

MAX_QUARANTINE = 1000  # rows kept for inspection; every one is counted


P = ParamSpec("P")
R = TypeVar("R")


def locked(fn: Callable[P, R]) -> Callable[P, R]:
    """Serialise a Store method (ingest, uplink and status share one connection), and
    replace a store that SQLite finds malformed, then try the method once more."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: Store = args[0]  # type: ignore[assignment]
        with store.lock:
            try:
                return fn(*args, **kwargs)
            except sqlite3.DatabaseError as e:
                if type(e) is not sqlite3.DatabaseError:  # only corruption is this type
                    raise
                store.replace_damaged(f"{fn.__name__}: {e}")
            return fn(*args, **kwargs)

    return wrapper


class Store:
    def __init__(self, path: str | Path, max_bytes: int, max_age_s: int,
                 repair: bool = True) -> None:
        """``repair``: move a damaged store aside (the daemon); False raises StoreError
        instead and changes nothing (``status``, which only reads)."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.bytes = 0
        self._bound_logged = -1e9
        self._dropped_unlogged = 0
        self._quarantined: list[Stored] = []  # since the last take_events
        self.lock = threading.RLock()
        self._file = StoreFile(self.path, repair)
        self.db, self.recoveries = self._file.open()
        self._events: list[Recovery] = list(self.recoveries)
        self.bytes = self._sum_bytes()

    # -- recovery -------------------------------------------------------------------
    def _sum_bytes(self) -> int:
        return int(self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()[0])

    def replace_damaged(self, detail: str) -> None:
        """The running store is malformed: move it aside and go on with a new one (with
        repair off: StoreError, and the file stays as it is)."""
        if not self._file.repair:
            raise StoreError(f"{self.path} is damaged ({detail}); the gateway moves it "
                             "aside and starts a new one when it starts")
        with self.lock:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db, recovery = self._file.replace(Recovery("runtime_error", detail))
            self.bytes = self._sum_bytes()
            self.recoveries.append(recovery)
            self._events.append(recovery)

    def take_events(self) -> tuple[list[Recovery], list[Stored]]:
        """Recoveries and quarantined records since the last call (for the alarm path)."""
        with self.lock:
            events, self._events = self._events, []
            bad, self._quarantined = self._quarantined, []
            return events, bad

    @locked
    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

    # -- writing ------------------------------------------------------------------
    @locked
    def commit(self, records: Sequence[Record], marks: dict[str, Mark] | None = None) -> None:
        """Store records and marks durably, in one transaction; then enforce the bounds."""
        ts = now_ms()
        rows = []
        for r in records:
            created = r.created_ms or ts
            rows.append((r.priority, r.device, r.boot, r.seq, created, r.body,
                         record_crc(r.priority, r.device, r.boot, r.seq, created, r.body)))
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO records (priority, device, boot, seq, created_ms, body, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                if marks:
                    self.db.executemany(
                        "INSERT OR REPLACE INTO marks (device, boot, seq, window, updated_ms, "
                        "seen, unix_ms, generation, floor_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(d, m.boot, m.seq, signed64(m.window), ts, window_bytes(m.window),
                          m.unix_ms, m.generation, m.floor_ms) for d, m in marks.items()])
                self.db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (SQLITE_FULL does); a second
                # ROLLBACK would replace the real error with "no transaction is active".
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot write {self.path}: {e}") from e
        self.bytes += sum(len(r[5]) for r in rows)
        self.enforce_bounds()

    @locked
    def delete(self, ids: Iterable[int]) -> None:
        """Remove delivered records."""
        id_list = list(ids)
        freed = 0
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for i in range(0, len(id_list), 500):
                chunk = id_list[i : i + 500]
                marks = ",".join("?" * len(chunk))
                freed += self.db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records WHERE id IN ({marks})",
                    chunk).fetchone()[0]
                self.db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StoreError(f"cannot delete from {self.path}: {e}") from e
        self.bytes -= freed

    def enforce_bounds(self) -> None:
        """Drop the oldest telemetry while over the byte bound or the age bound."""
        cutoff = now_ms() - self.max_age_s * 1000
        self._drop("SELECT id, LENGTH(body) FROM records WHERE priority = ? "
                   "AND created_ms < ? ORDER BY id", (TELEMETRY, cutoff), "dropped_age")
        over = self.bytes - self.max_bytes
        if over > 0:
            dropped = self._drop_bytes(over)
            if self.bytes > self.max_bytes:  # only alarms left: keep them, say so
                self.bump("alarms_over_bound", 1)
            self._dropped_unlogged += dropped
            now = time.monotonic()
            if now - self._bound_logged >= 60:  # a full store drops at every commit
                log.warning("store over its bound of %d bytes: dropped the %d oldest "
                            "telemetry records (since the last report)", self.max_bytes,
                            self._dropped_unlogged)
                self._bound_logged, self._dropped_unlogged = now, 0

    def _drop(self, query: str, args: tuple[int, ...], counter: str) -> int:
        rows = self.db.execute(query, args).fetchall()
        if rows:
            self.delete(r[0] for r in rows)
            self.bump(counter, len(rows))
        return len(rows)

    def _drop_bytes(self, over: int) -> int:
        victims: list[int] = []
        freed = 0
        for rid, size in self.db.execute(
                "SELECT id, LENGTH(body) FROM records WHERE priority = ? ORDER BY id",
                (TELEMETRY,)):
            if freed >= over:
                break
            victims.append(rid)
            freed += size
        if victims:
            self.delete(victims)
            self.bump("dropped_bytes", len(victims))
        return len(victims)

    @locked
    def bump(self, name: str, by: int) -> None:
        self.db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) "
                        "DO UPDATE SET value = value + excluded.value", (name, by))

    # -- reading ------------------------------------------------------------------
    @locked
    def fetch(self, priority: int, after_id: int, limit: int) -> list[Stored]:
        """The next records after ``after_id``; any that fail their checksum are moved to
        the quarantine table instead (counted, kept for inspection, never returned)."""
        rows = self.db.execute(
            "SELECT id, priority, device, boot, seq, created_ms, body, crc FROM records "
            "WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
            (priority, after_id, limit)).fetchall()
        good: list[Stored] = []
        bad: list[tuple[Stored, int | None]] = []
        for rid, p, d, b, s, c, body, crc in rows:
            row = Stored(rid, p, d, b, s, c, body)
            if record_intact(p, d, b, s, c, body, crc):
                good.append(row)
            else:
                bad.append((row, crc))
        if bad:
            self._quarantine(bad)
        return good

    def _quarantine(self, bad: list[tuple[Stored, int | None]]) -> None:
        ids = [r.id for r, _ in bad]
        marks = ",".join("?" * len(ids))
        now = now_ms()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            freed = self.db.execute(f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records "
                                    f"WHERE id IN ({marks})", ids).fetchone()[0]
            self.db.executemany(
                "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, *(storable(v) for v in (r.priority, r.device, r.boot, r.seq,
                                                  r.created_ms, r.body)), storable(crc), now)
                 for r, crc in bad])
            self.db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
            self.db.execute("DELETE FROM quarantine WHERE id NOT IN (SELECT id FROM "
                            "quarantine ORDER BY id DESC LIMIT ?)", (MAX_QUARANTINE,))
            self.db.execute("INSERT INTO counters VALUES ('quarantined', ?) ON CONFLICT(name) "
                            "DO UPDATE SET value = value + excluded.value", (len(bad),))
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StoreError(f"cannot quarantine in {self.path}: {e}") from e
        self.bytes -= int(freed)
        self._quarantined.extend(r for r, _ in bad)
        log.error("store: %d record(s) failed their checksum (damaged on the medium): "
                  "quarantined, not sent", len(bad))

    @locked
    def marks(self) -> dict[str, Mark]:
        """Every device's mark; a row the medium damaged (a column of the wrong type, a
        device id that is not UTF-8) is left out: that device starts afresh."""
        out: dict[str, Mark] = {}
        for d, b, s, w, seen, unix_ms, gen, floor in self.db.execute(
                "SELECT device, boot, seq, window, seen, unix_ms, generation, floor_ms "
                "FROM marks"):
            if type(d) is not str or storable(d) is not d or storable(gen) is not gen or not all(
                    type(v) is int for v in (b, s, w)) or not isinstance(seen, bytes | None):
                continue
            window = int.from_bytes(seen, "little") if seen else w & 0xFFFF_FFFF_FFFF_FFFF
            out[d] = Mark(b, s, window, unix_ms if type(unix_ms) is int else 0,
                          gen if type(gen) is str else "", floor if type(floor) is int else 0)
        return out

    @locked
    def last_seen(self) -> dict[str, int]:
        """Unix ms of each device's last committed frame."""
        return dict(self.db.execute("SELECT device, updated_ms FROM marks").fetchall())

    @locked
    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    @locked
    def depth(self) -> dict[str, float]:
        """Records waiting per priority, their bytes, and the oldest one's age in seconds
        (the unit of the health message, the metrics and status alike)."""
        rows = dict(self.db.execute(
            "SELECT priority, COUNT(*) FROM records GROUP BY priority").fetchall())
        oldest = self.db.execute("SELECT MIN(created_ms) FROM records").fetchone()[0]
        return {
            "alarms": rows.get(ALARM, 0),
            "telemetry": rows.get(TELEMETRY, 0),
            "bytes": self.bytes,
            "oldest_age_s": 0.0 if oldest is None else max(0, now_ms() - oldest) / 1000,
        }
