"""The durable store-and-forward queue: one SQLite file in WAL mode.

Everything the gateway has accepted lives here until the cloud broker acknowledged it.
Design:

- ``commit(records, marks)`` writes a batch of records *and* the devices' de-duplication
  marks in one transaction with ``synchronous=FULL`` (WAL fsync at commit), so once it
  returns the batch survives SIGKILL and power loss, and a frame is never stored without
  its mark or marked without being stored. Only then may ingest acknowledge the frames.
- Records have a priority (0 = alarm, 1 = telemetry). ``fetch`` returns alarms first;
  ``delete`` removes records once their PUBACK arrived.
- The store is bounded by bytes and by age. Over a bound, the oldest *telemetry* is dropped
  first and alarms never; every dropped record is counted (persistently) by reason.
- ``open`` runs ``PRAGMA quick_check``; a corrupt file is moved aside (``store.db.corrupt-
  <time>``), a fresh one created, and ``recovered_from`` says so for the alarm.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

ALARM = 0
TELEMETRY = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    device TEXT NOT NULL,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, id);
-- The age bound runs at every commit: without this it scans every telemetry row.
CREATE INDEX IF NOT EXISTS records_by_age ON records (priority, created_ms);
CREATE TABLE IF NOT EXISTS marks (
    device TEXT PRIMARY KEY,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    window INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StoreError(Exception):
    """The store cannot do its job (disk full, read-only folder, …)."""


@dataclass(frozen=True, slots=True)
class Record:
    priority: int
    device: str
    boot: int
    seq: int
    body: bytes
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    priority: int
    device: str
    boot: int
    seq: int
    created_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Mark:
    """De-duplication state of one device: highest (boot, seq) and a window of seen seqs."""

    boot: int
    seq: int
    window: int  # bit i set: seq - i was received (bit 0 is seq itself)


def now_ms() -> int:
    return int(time.time() * 1000)


def _signed64(v: int) -> int:
    # SQLite integers are signed 64-bit; the de-dup window is an unsigned 64-bit mask.
    return v - (1 << 64) if v >= 1 << 63 else v


P = ParamSpec("P")
R = TypeVar("R")


def locked(fn: Callable[P, R]) -> Callable[P, R]:
    """Serialise a Store method: ingest, uplink and status share one connection."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0].lock:  # type: ignore[attr-defined]
            return fn(*args, **kwargs)

    return wrapper


class Store:
    def __init__(self, path: str | Path, max_bytes: int, max_age_s: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.recovered_from: Path | None = None
        self.bytes = 0
        self._bound_logged = -1e9
        self._dropped_unlogged = 0
        self.lock = threading.RLock()
        self.db = self._open()

    # -- opening and recovery ---------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.path.parent}: {e.strerror}") from e
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            if ok:
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            if "unable to open" in str(e) or "readonly" in str(e):
                raise StoreError(f"cannot open {self.path}: {e}") from e
            ok = False
        if not ok:
            with contextlib.suppress(Exception):
                db.close()
            db = self._recover()
        self.bytes = int(db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()[0])
        return db

    def _recover(self) -> sqlite3.Connection:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        log.error("store %s is corrupt: moved aside to %s, starting a new one", self.path, aside)
        self.recovered_from = aside
        db = self._connect()
        db.executescript(SCHEMA)
        return db

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
        rows = [(r.priority, r.device, r.boot, r.seq, r.created_ms or ts, r.body)
                for r in records]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO records (priority, device, boot, seq, created_ms, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)", rows)
                if marks:
                    self.db.executemany(
                        "INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?)",
                        [(d, m.boot, m.seq, _signed64(m.window), ts)
                         for d, m in marks.items()])
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
        rows = self.db.execute(
            "SELECT id, priority, device, boot, seq, created_ms, body FROM records "
            "WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
            (priority, after_id, limit)).fetchall()
        return [Stored(*r) for r in rows]

    @locked
    def marks(self) -> dict[str, Mark]:
        return {d: Mark(b, s, w & 0xFFFF_FFFF_FFFF_FFFF) for d, b, s, w in
                self.db.execute("SELECT device, boot, seq, window FROM marks")}

    @locked
    def last_seen(self) -> dict[str, int]:
        """Unix ms of each device's last committed frame."""
        return dict(self.db.execute("SELECT device, updated_ms FROM marks").fetchall())

    @locked
    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    @locked
    def depth(self) -> dict[str, int]:
        rows = dict(self.db.execute(
            "SELECT priority, COUNT(*) FROM records GROUP BY priority").fetchall())
        oldest = self.db.execute("SELECT MIN(created_ms) FROM records").fetchone()[0]
        return {
            "alarms": rows.get(ALARM, 0),
            "telemetry": rows.get(TELEMETRY, 0),
            "bytes": self.bytes,
            "oldest_age_ms": 0 if oldest is None else max(0, now_ms() - oldest),
        }
