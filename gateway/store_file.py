"""The store's file on its medium: open it, check it, and when it is damaged, start afresh.

SD cards wear out and power drops mid-write, so opening never trusts the file. In order:
the WAL is read as SQLite will replay it (wal.py) and refused if SQLite would silently
drop committed transactions; the database must pass ``PRAGMA quick_check``, migrate to the
current schema and answer a query on every table; and an identity file beside it
(``store.db.id``, written once when a store is created) says whether the store that was
here has vanished, been emptied or been swapped for another. Any failure is a
``Recovery``: the damaged files are moved aside (``store.db.corrupt-<time>``, kept as
evidence), what can still be read from a copy of them (records whose checksums hold,
de-duplication marks, counters) is carried into a fresh store, and the recovery says what
was lost, for the alarm. Nothing here raises for a damaged file: the gateway always
starts. Only a folder that cannot be written is a ``StoreError`` (nothing can fix that
but the operator).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from gateway import wal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
IDENT = re.compile(r"[0-9a-f]{32}")  # a store's identity: uuid4 hex
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    device TEXT NOT NULL,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER  -- record_crc(); NULL only for records stored before checksums existed
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, id);
-- The age bound runs at every commit: without this it scans every telemetry row.
CREATE INDEX IF NOT EXISTS records_by_age ON records (priority, created_ms);
CREATE TABLE IF NOT EXISTS marks (
    device TEXT PRIMARY KEY,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    window INTEGER NOT NULL,  -- its low 64 bits (schema 0); ``seen`` holds all of it
    updated_ms INTEGER NOT NULL,
    seen BLOB,
    unix_ms INTEGER NOT NULL DEFAULT 0,
    generation TEXT NOT NULL DEFAULT '',
    floor_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, priority INTEGER, device TEXT, boot INTEGER, seq INTEGER,
    created_ms INTEGER, body BLOB, crc INTEGER, quarantined_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Schema 0 (before integrity checks) lacks these columns; each is added when missing.
MIGRATIONS = (
    ("records", "crc", "INTEGER"),
    ("marks", "seen", "BLOB"),
    ("marks", "unix_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("marks", "generation", "TEXT NOT NULL DEFAULT ''"),
    ("marks", "floor_ms", "INTEGER NOT NULL DEFAULT 0"),
)


class StoreError(Exception):
    """The store cannot do its job (disk full, read-only folder, …)."""


@dataclass(frozen=True)
class Recovery:
    """What was found wrong with the store and what was done about it."""

    cause: str  # corrupt, wal_lost_commits, missing, replaced, runtime_error
    detail: str
    moved_to: str = ""  # where the damaged files went ("" if there were none)
    lost_commits: int = 0  # transactions SQLite would have dropped from the WAL
    salvaged: int = 0  # records carried into the new store
    dropped: int = 0  # records that could not be read or failed their checksum
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def record_crc(priority: int, device: str, boot: int, seq: int, created_ms: int,
               body: bytes) -> int:
    """CRC-32 over a record's identity and body: one flipped byte on the medium shows."""
    head = f"{priority}|{device}|{boot}|{seq}|{created_ms}|".encode()
    return zlib.crc32(body, zlib.crc32(head))


def well_typed(priority: object, device: object, boot: object, seq: object,
               created_ms: object, body: object) -> bool:
    """Every column of a stored row of the type it was written with."""
    if not (type(priority) is int and type(device) is str and type(boot) is int and
            type(seq) is int and type(created_ms) is int and type(body) is bytes):
        return False
    try:  # text that was not UTF-8 on the medium (read with surrogates: _text)
        device.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_intact(priority: object, device: object, boot: object, seq: object,
                  created_ms: object, body: object, crc: object) -> bool:
    """A stored row is what was written: well typed, and its checksum holds. Every row
    has one (migrating from schema 0 gave the old rows theirs), so a missing one is
    damage too."""
    return well_typed(priority, device, boot, seq, created_ms, body) and \
        crc == record_crc(priority, device, boot, seq, created_ms, body)  # type: ignore[arg-type]


def _text(raw: bytes) -> str:
    # A damaged row may hold bytes that are not UTF-8: read them anyway (its checksum
    # then fails and the row is quarantined) instead of failing the whole query.
    return raw.decode("utf-8", "surrogateescape")


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.text_factory = _text
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema up to date; writes nothing when it is (status on a full disk)."""
    if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    db.executescript(SCHEMA)
    for table, column, decl in MIGRATIONS:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    # Schema 0 records get their checksum now: from here on, none without one is intact.
    sums = [(record_crc(*row[1:]), row[0]) for row in db.execute(
        "SELECT id, priority, device, boot, seq, created_ms, body FROM records "
        "WHERE crc IS NULL") if well_typed(*row[1:])]
    db.executemany("UPDATE records SET crc = ? WHERE id = ?", sums)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _probe(db: sqlite3.Connection) -> None:
    """Every table and index answers: quick_check does not compare an index with its
    table, and a damaged index fails the queries that use it (fetch, the age bound)."""
    db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()
    for query in ("SELECT * FROM records INDEXED BY records_by_priority "
                  "WHERE priority >= 0 ORDER BY priority, id",
                  "SELECT * FROM records INDEXED BY records_by_age "
                  "WHERE priority >= 0 ORDER BY priority, created_ms",
                  "SELECT * FROM marks", "SELECT * FROM counters", "SELECT * FROM meta",
                  "SELECT id FROM quarantine"):
        for _ in db.execute(query):
            pass


def siblings(path: Path) -> list[Path]:
    return [Path(str(path) + s) for s in ("", "-wal", "-shm")]


def _not_damage(e: sqlite3.Error) -> bool:
    """Errors that moving the file aside would not cure: no access, or another process
    (a second gateway) holding it."""
    text = str(e)
    return any(s in text for s in ("unable to open", "readonly", "locked", "busy"))


class StoreFile:
    """Opens ``path`` as a working store, recovering from whatever is wrong with it."""

    def __init__(self, path: Path, repair: bool = True) -> None:
        self.path = path
        self.repair = repair
        self.id_path = path.with_name(path.name + ".id")

    def open(self) -> tuple[sqlite3.Connection, list[Recovery]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.path.parent}: {e.strerror}") from e
        recoveries: list[Recovery] = []
        damage = self._inspect_wal()
        db: sqlite3.Connection | None = None
        if damage is None:
            try:
                db = self._open_checked()
            except sqlite3.Error as e:
                if _not_damage(e):
                    raise StoreError(f"cannot open {self.path}: {e}") from e
                damage = Recovery("corrupt", f"{type(e).__name__}: {e}")
        if damage is not None:
            if not self.repair:
                raise StoreError(f"{self.path} is damaged ({damage.detail}); the gateway "
                                 "moves it aside and starts a new one when it starts")
            db, damage = self.replace(damage)
            recoveries.append(damage)
        assert db is not None
        identity = self._check_identity(db, fresh=damage is not None)
        if identity is not None:
            recoveries.append(identity)
        return db, recoveries

    def _inspect_wal(self) -> Recovery | None:
        wal_path = Path(str(self.path) + "-wal")
        try:
            report = wal.inspect(wal_path.read_bytes()) if wal_path.exists() else None
        except OSError as e:
            return Recovery("corrupt", f"cannot read {wal_path.name}: {e.strerror}")
        if report is None or not report.damaged:
            return None
        return Recovery("wal_lost_commits", f"the WAL breaks after frame {report.replayed} of "
                        f"{report.frames}: SQLite would drop {report.lost_commits} committed "
                        "transactions", lost_commits=report.lost_commits)

    def _open_checked(self) -> sqlite3.Connection:
        db = connect(self.path)
        try:
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            _migrate(db)  # idempotent; status (repair off) may meet a store of schema 0 too
            _probe(db)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise
        return db

    # -- damaged: move aside, salvage, start afresh -------------------------------
    def replace(self, damage: Recovery) -> tuple[sqlite3.Connection, Recovery]:
        """Move the damaged files aside and open a new store with what can be salvaged."""
        aside = self.path.with_name(
            f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        moved = False
        for src, dst in zip(siblings(self.path), siblings(aside), strict=True):
            if src.exists():
                src.rename(dst)
                moved = True
        from gateway.store_salvage import Salvage, salvage  # it reads this module

        salvaged = salvage(aside) if moved else Salvage()
        db = connect(self.path)
        _migrate(db)
        salvaged.write_to(db)
        self._new_identity(db)
        log.error("store %s is damaged (%s): moved aside to %s; a new store holds the %d "
                  "records that could be read (%d could not)", self.path, damage.detail,
                  aside, len(salvaged.records), salvaged.dropped)
        return db, Recovery(damage.cause, damage.detail, str(aside) if moved else "",
                            damage.lost_commits, len(salvaged.records), salvaged.dropped)

    # -- identity: a store that vanished or was swapped is damage too ---------------
    def _new_identity(self, db: sqlite3.Connection) -> str:
        ident = uuid.uuid4().hex
        db.execute("INSERT OR REPLACE INTO meta VALUES ('id', ?)", (ident,))
        with contextlib.suppress(OSError):
            self.id_path.write_text(ident + "\n")
        return ident

    def _check_identity(self, db: sqlite3.Connection, fresh: bool) -> Recovery | None:
        if not self.repair:
            return None
        row = db.execute("SELECT value FROM meta WHERE name = 'id'").fetchone()
        if row is not None and not (type(row[0]) is str and IDENT.fullmatch(row[0])):
            row = None  # damaged on the medium: it gets a new identity
        try:
            expected = self.id_path.read_text().strip()
        except OSError:
            expected = ""
        if fresh:
            return None  # replace() gave it a new identity and already reported why
        if row is None:
            empty = db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0 and \
                db.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0
            self._new_identity(db)
            if expected and empty:  # there was a store here, and now there is nothing
                return Recovery("missing", f"{self.path.name} was missing or empty: the "
                                "records it held and its replay marks are gone")
            return None  # the first start, or a store from before identities
        if expected and row[0] != expected:
            self._new_identity(db)
            return Recovery("replaced", f"{self.path.name} is not the store that was here "
                            "(restored from a backup?): its replay marks may be old")
        if not expected:
            with contextlib.suppress(OSError):
                self.id_path.write_text(row[0] + "\n")
        return None
