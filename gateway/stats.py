"""One snapshot of the running daemon's figures, read by health, metrics and status alike.

``Daemon.stats()`` takes a ``Stats`` from the pipeline, the store, the links, the hold and
the serial readers in one place. Everything that reports figures reads that one object:
the uplink's retained health message (``health()``), the Prometheus collector
(gateway/metrics.py) and ``gridedge-gateway status``, which gets ``as_dict()`` as JSON
from the daemon's ``/status`` endpoint beside ``/metrics`` (it used to parse the Prometheus
text back, by metric name). A figure added here reaches all three, or is left out of one
on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.link import CONNECTED, Snapshot
from gateway.payloads import iso_ms


@dataclass(frozen=True)
class StoreFigures:
    alarms: int  # records waiting, by priority
    telemetry: int
    bytes: int
    oldest_age_s: float
    dropped: dict[str, int]  # records dropped by the store's bounds, by reason
    failures: int  # commits that failed (disk full, I/O errors)
    blocked: tuple[float, str] | None  # (since, why) while commits fail


@dataclass(frozen=True)
class Stats:
    accepted: int  # frames verified and stored
    rejected: dict[str, int]  # by reason
    missing: int  # frames found missing (sequence gaps)
    store: StoreFigures
    held: int  # readings whose local PUBACK waited for the cloud's
    spilled: int  # ... and that were committed after all
    ingest: Snapshot
    subscribed: bool
    uplink: Snapshot | None  # None: uplink disabled
    delivered: int  # records the cloud acknowledged
    connects: int  # connections made to the cloud
    open_alarms: list[tuple[str, str, str]]  # (kind, device or feeder, channel)
    alarm_events: int  # alarm events stored for the cloud
    serial: dict[str, bool] = field(default_factory=dict)  # port -> open
    bytes_written: int = 0  # what this process wrote to storage (SD-card wear)

    def health(self) -> dict[str, object]:
        """The uplink's health message: store depth, ingest counts and link, open alarms."""
        s = self.store
        return {
            "store": {"alarms": s.alarms, "telemetry": s.telemetry, "bytes": s.bytes,
                      "oldest_age_s": s.oldest_age_s, "writable": s.blocked is None},
            "ingest": {"accepted": self.accepted, "rejected": dict(self.rejected),
                       "missing": self.missing, "link": self.ingest.as_dict()},
            "open_alarms": len(self.open_alarms),
        }

    def as_dict(self) -> dict[str, Any]:
        """The live part of ``gridedge-gateway status`` (JSON)."""
        now = time.time()
        ingest: dict[str, Any] = {
            "state": self.ingest.state, "since": iso_ms(int(self.ingest.since * 1000)),
            "for_s": round(max(0.0, now - self.ingest.since), 1), "error": self.ingest.error,
            "subscribed": self.subscribed, "connect_failures": self.ingest.failures,
            "accepted": self.accepted, "rejected": dict(self.rejected)}
        store: dict[str, Any] = {"writable": self.store.blocked is None}
        if self.store.blocked is not None:
            since, why = self.store.blocked
            store.update(error=why, since=iso_ms(int(since * 1000)),
                         for_s=round(max(0.0, now - since), 1))
        uplink: dict[str, Any] = {"state": "disconnected"}
        if self.uplink is not None:
            uplink = {"state": self.uplink.state, "error": self.uplink.error,
                      "since": iso_ms(int(self.uplink.since * 1000))}
        uplink.update(connects=self.connects, delivered=self.delivered)
        return {
            "running": True, "ingest": ingest, "store": store, "uplink": uplink,
            "open_alarms": [{"kind": k, "source": s, "channel": c}
                            for k, s, c in self.open_alarms],
            "serial": {port: "open" if is_open else "closed"
                       for port, is_open in self.serial.items()},
        }

    @property
    def uplink_connected(self) -> bool:
        return self.uplink is not None and self.uplink.state == CONNECTED


def storage_bytes_written() -> int:
    """What this process made the kernel write to storage (/proc/self/io write_bytes)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
