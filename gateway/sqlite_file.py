"""One way to open the gateway's small SQLite files (commands.db, keys.db): checked, or set aside.

``open_checked`` opens a file in WAL mode with ``synchronous=FULL`` (what it holds must
survive a power cut), runs ``PRAGMA quick_check``, creates the schema and runs a probe
query over it. A file that fails any of that (the medium damaged it, or it is not a
database) is moved aside as ``<name>.corrupt-<unix time>`` and a new one started; the
second value returned then says what happened, for the caller's log and alarm event. A new
file is created with mode ``mode`` (keys.db holds keys: 0600).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path


def open_checked(path: Path, schema: str, probe: str,
                 mode: int = 0o644) -> tuple[sqlite3.Connection, str | None]:
    """(the connection, None), or (a new file's connection, what was wrong and where the
    old file went)."""
    try:
        return _open(path, schema, probe, mode), None
    except sqlite3.DatabaseError as e:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return _open(path, schema, probe, mode), f"{path}: {e}; moved to {aside.name}"


def _open(path: Path, schema: str, probe: str, mode: int) -> sqlite3.Connection:
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, mode))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        db.executescript(schema)
        db.execute(probe).fetchall()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db
