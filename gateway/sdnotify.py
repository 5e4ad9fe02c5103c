"""systemd notification (Type=notify) and a watchdog that pings only while work progresses.

``notify`` sends to $NOTIFY_SOCKET (a unix datagram socket; "@" means the abstract
namespace) and does nothing outside systemd. ``Watchdog.check`` is called from the main
loop: it sends WATCHDOG=1 only if every monitored loop (committer, uplink, serial readers,
the MQTT network thread) reported progress within half of WatchdogSec, so a hung stage
stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), addr)
        except OSError:
            return False
    return True


class Watchdog:
    def __init__(self, probes: dict[str, Callable[[], float]]) -> None:
        """probes: name -> the monotonic time of that loop's last progress."""
        usec = os.environ.get("WATCHDOG_USEC")
        self.interval_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        self.probes = probes
        self.stalled: list[str] = []

    def healthy(self, now: float | None = None) -> bool:
        if self.interval_s is None:
            return True
        now = time.monotonic() if now is None else now
        limit = self.interval_s / 2
        self.stalled = [n for n, last in self.probes.items() if now - last() > limit]
        return not self.stalled

    def check(self) -> bool:
        if self.interval_s is not None and self.healthy():
            return notify("WATCHDOG=1")
        return False
