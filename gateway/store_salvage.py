"""Salvage: what a damaged store still yields, carried into the new one.

The damaged files are moved aside untouched (evidence); this reads a *copy* of them
(SQLite may write to what it opens: replaying the valid part of a WAL, for one). Records
come over only if their checksum holds (or they predate checksums: schema 0); the marks
and counters come over as they are, with the same statements for both schemas. Every
query may fail part way on a damaged file: what was read until then is kept, and the
count of records that could not be read goes into the recovery's report.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gateway.store_file import record_crc, record_intact, siblings, well_typed


@dataclass
class Salvage:
    records: list[tuple[object, ...]] = field(default_factory=list)
    marks: list[tuple[object, ...]] = field(default_factory=list)
    counters: list[tuple[object, ...]] = field(default_factory=list)
    dropped: int = 0

    def write_to(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO records (priority, device, boot, seq, created_ms, body, "
                       "crc) VALUES (?, ?, ?, ?, ?, ?, ?)", self.records)
        db.executemany("INSERT OR REPLACE INTO marks (device, boot, seq, window, updated_ms, "
                       "seen, unix_ms, generation, floor_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       self.marks)
        db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", self.counters)
        if self.dropped:
            db.execute("INSERT INTO counters VALUES ('salvage_dropped', ?) ON CONFLICT(name) "
                       "DO UPDATE SET value = value + excluded.value", (self.dropped,))
        db.execute("COMMIT")


def salvage(aside: Path) -> Salvage:
    """What a copy of the damaged store still yields (the copy: SQLite may write to it)."""
    out = Salvage()
    with tempfile.TemporaryDirectory(dir=aside.parent, prefix=".salvage-") as tmp:
        copy = Path(tmp) / "copy.db"
        for src, dst in zip(siblings(aside), siblings(copy), strict=True):
            if src.exists():
                shutil.copyfile(src, dst)
        try:
            db = sqlite3.connect(copy, isolation_level=None)
        except sqlite3.Error:
            return out
        try:
            out.records, out.dropped = _read_records(db)
            for query, target in (
                ("SELECT device, boot, seq, window, updated_ms, seen, unix_ms, generation, "
                 "floor_ms FROM marks", out.marks),
                ("SELECT device, boot, seq, window, updated_ms, NULL, 0, '', 0 FROM marks",
                 out.marks),
                ("SELECT name, value FROM counters", out.counters),
            ):
                if target and query.endswith("FROM marks"):
                    continue  # the first marks query worked
                with contextlib.suppress(sqlite3.Error):
                    target.extend(db.execute(query).fetchall())
        finally:
            db.close()
    return out


def _read_records(db: sqlite3.Connection) -> tuple[list[tuple[object, ...]], int]:
    """Records whose checksum holds (those of schema 0, before checksums, get theirs if
    well typed), and how many did not."""
    kept: list[tuple[object, ...]] = []
    dropped = 0
    try:
        total = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.Error:
        total = 0
    try:
        legacy = "crc" not in {r[1] for r in db.execute("PRAGMA table_info(records)")}
    except sqlite3.Error:
        return kept, total
    query = "SELECT priority, device, boot, seq, created_ms, body" + \
        ("" if legacy else ", crc") + " FROM records"
    try:
        for row in db.execute(query):
            if legacy:  # schema 0: no checksum yet; a well-typed row gets one
                row = (*row, record_crc(*row) if well_typed(*row) else None)
            if record_intact(*row):
                kept.append(row)
            else:
                dropped += 1
    except sqlite3.Error:
        pass  # the table broke part way: keep what was read
    return kept, max(dropped, total - len(kept))
