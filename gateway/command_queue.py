"""The gateway's durable queue of commands per device, in its own SQLite file.

Each accepted request (command_auth.py) becomes a row keyed by (device, id): a command id
is the key of idempotency, so a request sent twice is queued once and answered with its
state. Its ``counter``, the one the device requires to rise (command.py), is
``max(the device's last + 1, now in Unix ms)``: it rises even if this file is lost and a
new one starts, because time has moved on (a clock set back by more than the gap between
two commands is the only way to repeat one, and the device then refuses it as replayed).
States: ``queued`` (waiting for the device), ``delivered`` (its broker or its serial line
took it for the device), ``expired`` (never delivered in time; or delivered, but no result
came within ``RESULT_GRACE_S`` after the expiry), and the device's own results (done,
failed, refused). Bounded: at most ``MAX_PENDING`` queued per device, and finished rows older than
``KEEP_S`` are deleted. Written with ``synchronous=FULL``: an accepted command survives a
power cut. A file that SQLite cannot open or check is moved aside and a new one started
(``problem`` says so, for the alarm).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.command_auth import ArgValue, Request
from gateway.sqlite_file import open_checked

log = logging.getLogger(__name__)

MAX_PENDING = 16
RESULT_GRACE_S = 60
KEEP_S = 7 * 86_400
SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    device TEXT NOT NULL, id TEXT NOT NULL, counter INTEGER NOT NULL, op TEXT NOT NULL,
    args TEXT NOT NULL, expires_ms INTEGER NOT NULL, operator TEXT NOT NULL,
    state TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    reply TEXT NOT NULL, correlation BLOB NOT NULL, PRIMARY KEY (device, id));
CREATE TABLE IF NOT EXISTS counters (device TEXT PRIMARY KEY, counter INTEGER NOT NULL);
"""
COLUMNS = "device, id, counter, op, args, expires_ms, state, reply, correlation"


@dataclass(frozen=True)
class Entry:
    device: str
    id: str
    counter: int
    op: str
    args: dict[str, ArgValue]
    expires_ms: int
    state: str
    reply: str = ""  # where its answers go (the request's MQTT 5 response topic)
    correlation: bytes = b""  # the request's correlation data, carried back


class Full(Exception):
    pass


class CommandQueue:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        self._lock = threading.Lock()
        self.db, problem = open_checked(
            self.path, SCHEMA, "SELECT count(*) FROM commands JOIN counters USING (device)")
        if problem is not None:
            self.problem = f"{problem}, the queue starts empty"
            log.error("commands: %s", self.problem)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def add(self, req: Request, now_ms: int | None = None, reply: str = "",
            correlation: bytes = b"") -> tuple[Entry, bool]:
        """Queue a request: (its entry, True), or (the entry queued before with its id,
        False). Full if the device has MAX_PENDING commands waiting."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._get(req.device, req.id)
            if old is not None:
                return old, False
            waiting = self.db.execute("SELECT count(*) FROM commands WHERE device = ? AND "
                                      "state = 'queued'", (req.device,)).fetchone()[0]
            if waiting >= MAX_PENDING:
                raise Full(f"{req.device} has {waiting} commands waiting")
            row = self.db.execute("SELECT counter FROM counters WHERE device = ?",
                                  (req.device,)).fetchone()
            counter = max((row[0] + 1) if row else 0, now_ms)
            self.db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)",
                            (req.device, counter))
            self.db.execute(
                "INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (req.device, req.id, counter, req.op, json.dumps(req.args), req.expires_ms,
                 req.operator, now_ms, now_ms, reply, correlation))
            self.db.execute("DELETE FROM commands WHERE state != 'queued' AND updated_ms < ?",
                            (now_ms - KEEP_S * 1000,))
        return Entry(req.device, req.id, counter, req.op, req.args, req.expires_ms,
                     "queued", reply, correlation), True

    def get(self, device: str, cid: str) -> Entry | None:
        with self._lock:
            return self._get(device, cid)

    def _get(self, device: str, cid: str) -> Entry | None:
        row = self.db.execute(f"SELECT {COLUMNS} FROM commands WHERE device = ? AND id = ?",
                              (device, cid)).fetchone()
        return None if row is None else _entry(row)

    def pending(self, device: str, now_ms: int) -> list[Entry]:
        """The device's queued commands that have not expired, oldest first."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT {COLUMNS} FROM commands "
                "WHERE device = ? AND state = 'queued' AND expires_ms > ? ORDER BY counter",
                (device, now_ms)).fetchall()
        return [_entry(r) for r in rows]

    def mark(self, device: str, cid: str, state: str, now_ms: int | None = None) -> None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock, self.db:
            self.db.execute("UPDATE commands SET state = ?, updated_ms = ? WHERE device = ? "
                            "AND id = ?", (state, now_ms, device, cid))

    def expire(self, now_ms: int) -> list[Entry]:
        """Mark expired the queued commands past their expiry, and the delivered ones with
        no result ``RESULT_GRACE_S`` after it; those entries, as they were."""
        where = ("(state = 'queued' AND expires_ms <= ?) OR "
                 "(state = 'delivered' AND expires_ms <= ?)")
        args = (now_ms, now_ms - RESULT_GRACE_S * 1000)
        with self._lock, self.db:
            rows = self.db.execute(f"SELECT {COLUMNS} FROM commands WHERE {where}",
                                   args).fetchall()
            self.db.execute(f"UPDATE commands SET state = 'expired', updated_ms = ? WHERE "
                            f"{where}", (now_ms, *args))
        return [_entry(r) for r in rows]

    def unanswered(self, before_ms: int, now_ms: int) -> dict[str, list[Entry]]:
        """Per device, the commands delivered (last) before ``before_ms`` that have no
        result yet and have not expired, oldest first: to be sent again."""
        return self._by_device("delivered", before_ms, now_ms)

    def waiting(self, now_ms: int) -> dict[str, list[Entry]]:
        """Per device, the queued commands that have not expired, oldest first."""
        return self._by_device("queued", now_ms + 1, now_ms)

    def _by_device(self, state: str, before_ms: int, now_ms: int) -> dict[str, list[Entry]]:
        with self._lock:
            rows = self.db.execute(
                f"SELECT {COLUMNS} FROM commands WHERE state = ? AND "
                "updated_ms < ? AND expires_ms > ? ORDER BY counter",
                (state, before_ms, now_ms)).fetchall()
        out: dict[str, list[Entry]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(_entry(r))
        return out

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.db.execute("SELECT state, count(*) FROM commands GROUP BY state"))


def listing(path: str | Path) -> list[dict[str, object]]:
    """Every command in a queue file, newest first, read-only (the running gateway owns
    the file: this never writes, moves or repairs it)."""
    if not Path(path).exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT device, id, op, args, state, counter, expires_ms, "
                          "updated_ms FROM commands ORDER BY updated_ms DESC").fetchall()
    keys = ("device", "id", "op", "args", "state", "counter", "expires_ms", "updated_ms")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _entry(row: tuple[str, str, int, str, str, int, str, str, bytes]) -> Entry:
    device, cid, counter, op, args, expires, state, reply, correlation = row
    return Entry(device, cid, counter, op, json.loads(args), expires, state, reply,
                 bytes(correlation))
