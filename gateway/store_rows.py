"""What the store holds, row by row: a record to store, a stored record, a device's mark.

Plain values shared by the store (store.py), the modules that fill it and read it back
(records, dedup, hold, the uplink), and the conversions a row needs on its way to SQLite
and back: the marks' window as bytes and as the legacy signed 64-bit column, and a
damaged column (text that is not UTF-8 on the medium) as SQLite can take it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ALARM = 0
TELEMETRY = 1


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
    """De-duplication state of one device (dedup.py says what each field means)."""

    boot: int
    seq: int
    window: int  # bit i set: seq - i was received (bit 0 is seq itself)
    unix_ms: int = 0  # the newest device time accepted so far (0: none)
    generation: str = ""  # the key (and resync) the mark was made under
    floor_ms: int = 0  # the newest device time before the counters last went back


def now_ms() -> int:
    return int(time.time() * 1000)


def signed64(v: int) -> int:
    # SQLite integers are signed 64-bit; the legacy column keeps the window's low 64 bits.
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def storable(value: object) -> object:
    """A damaged column as SQLite can take it back: text read with surrogates (not UTF-8
    on the medium) goes back as the bytes it was."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


def window_bytes(window: int) -> bytes:
    return window.to_bytes(max(8, (window.bit_length() + 7) // 8), "little")
