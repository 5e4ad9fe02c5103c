"""Device keys rotated by command (``key-rotate``), in their own SQLite file beside the store.

The registry (gateway.toml, devices.toml) holds each device's key as provisioned; a
rotation replaces it here without rewriting those files. A row per device: ``base``, the
fingerprint of the registry key it was rotated from (the row applies only while the
registry still says that key: a device provisioned again starts from its new registry
key), ``current`` (the key in use) and ``next`` (sent to the device, not yet seen in
use). ``begin`` makes the next key (once: asked again, the same one, so a command sent
twice carries one key), ``promote`` makes it current when the device's first frame MACed
with it arrives (verify.py). Until then both verify, and the old one still does for
``GRACE_S`` after the switch, for frames the device built before it that arrive after.
Written with ``synchronous=FULL`` before the new key leaves the gateway: a power cut
never loses a key a device may hold. The file is as secret as the registry (mode 0600).
A file SQLite cannot open or check is moved aside (``problem`` says so): the devices are
then back on their registry keys, and those that had switched are rejected (bad_mac)
until provisioned again; an alarm event says so.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.devices import Device
from gateway.sqlite_file import open_checked

GRACE_S = 60.0
SCHEMA = """CREATE TABLE IF NOT EXISTS keys (device TEXT PRIMARY KEY, base TEXT NOT NULL,
    current BLOB, next BLOB, updated_ms INTEGER NOT NULL);"""


@dataclass(frozen=True)
class Keys:
    """A device's keys for verifying: ``current``, and ``others`` that also verify now (the
    next one while a rotation is pending; the previous one for GRACE_S after it)."""

    current: bytes
    others: tuple[bytes, ...] = ()


class Keyring:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._previous: dict[str, tuple[bytes, float]] = {}  # device -> (old key, until)
        self._rows: dict[str, tuple[str, bytes | None, bytes | None]] = {}  # the file's
        self.db, problem = open_checked(self.path, SCHEMA,
                                        "SELECT device, base, current, next FROM keys", 0o600)
        if problem is not None:
            self.problem = f"{problem}, rotated keys lost"
        for device, b, current, nxt in self.db.execute(
                "SELECT device, base, current, next FROM keys"):
            self._rows[device] = (b, current, nxt)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _row(self, device: str, dev: Device) -> tuple[bytes | None, bytes | None]:
        row = self._rows.get(device)  # the file's rows, in memory: keys() is on the hot path
        if row is None or row[0] != base(dev):
            return None, None
        return row[1], row[2]

    def apply(self, devices: dict[str, Device]) -> dict[str, Device]:
        """The registry's devices with their rotated keys (the generation, which their
        replay marks are bound to, unchanged: a rotation is no new device)."""
        with self._lock:
            out = {}
            for d, dev in devices.items():
                current, _next = self._row(d, dev)
                out[d] = dev if current is None else replace(dev, key=current)
            return out

    def keys(self, device: str, dev: Device, now: float | None = None) -> Keys:
        """What verifies a device's frame now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            current, nxt = self._row(device, dev)
            previous = self._previous.get(device)
        others = tuple(k for k in (nxt, previous[0] if previous and previous[1] > now
                                   else None) if k is not None)
        return Keys(current or dev.key, others)

    def rotating(self, device: str, dev: Device) -> bool:
        """Whether the device has a next key it has not used yet."""
        with self._lock:
            return self._row(device, dev)[1] is not None

    def begin(self, device: str, dev: Device) -> tuple[bytes, bytes]:
        """(the key the device holds now, its next key), the next one made and stored
        durably the first time."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            current, nxt = self._row(device, dev)
            if nxt is None:
                nxt = os.urandom(32)
                self.db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?)",
                                (device, base(dev), current, nxt, int(time.time() * 1000)))
                self._rows[device] = (base(dev), current, nxt)
            return current or dev.key, nxt

    def promote(self, device: str, dev: Device, used: bytes,
                now: float | None = None) -> bool:
        """A frame verified with ``used``: if that is the device's next key, it becomes
        current, and the old one verifies for GRACE_S more. Whether it was."""
        now = time.monotonic() if now is None else now
        with self._lock, self.db:
            current, nxt = self._row(device, dev)
            if nxt is None or nxt != used:
                return False
            self.db.execute("UPDATE keys SET current = ?, next = NULL, updated_ms = ? "
                            "WHERE device = ?", (nxt, int(time.time() * 1000), device))
            self._rows[device] = (base(dev), nxt, None)
            self._previous[device] = (current or dev.key, now + GRACE_S)
            return True


def base(dev: Device) -> str:
    """The fingerprint of the key the registry gives the device (its generation's first
    part: dedup.py binds the replay marks to it)."""
    return dev.generation.split("+")[0]
