"""The state of one broker link, logged once per change and readable by status and metrics.

paho retries a failed or lost connection on its own, forever and silently. ``Link`` is
told the outcome of every attempt (``up``, or ``down`` with a state and the error) and
turns that stream into what an operator needs: one log line when the state or its error
changes ("ingest cannot reach the local broker 127.0.0.1:1883: Connection refused;
retrying"), while it lasts a reminder at most once per ``remind_s`` ("still ... after
3 min (9 attempts)"), one line when it is back, with the length of the whole outage
("connected again after 42 s"), and every attempt at debug level. ``snapshot`` gives the
state, since when and the last error to ``gridedge-gateway status``, the metrics endpoint
and the health message, from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.payloads import iso_ms

CONNECTING = "connecting"  # before the first attempt's outcome
CONNECTED = "connected"
DISCONNECTED = "disconnected"  # unreachable, lost, or closed before the broker answered
REFUSED = "refused"  # the broker answered and refused (credentials, authorisation)
STATES = (CONNECTING, CONNECTED, DISCONNECTED, REFUSED)

MAX_ERROR = 200  # characters of an error kept and shown


@dataclass(frozen=True)
class Snapshot:
    state: str
    since: float  # unix time of the last change of state
    error: str  # why the last attempt failed ("" while connected, or before any failure)
    failures: int  # failed attempts since the start

    def as_dict(self) -> dict[str, object]:
        """For the health message: the state, since when (RFC 3339) and the last error."""
        return {"state": self.state, "since": iso_ms(int(self.since * 1000)),
                "error": self.error}


def duration(seconds: float) -> str:
    """'42 s', '3 min', '2.5 h': how long an outage has lasted, for a log line."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Link:
    """One link's state; ``name`` is who connects ("ingest"), ``peer`` to what ("the
    local broker 127.0.0.1:1883")."""

    def __init__(self, name: str, peer: str, log: logging.Logger, remind_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.peer = peer
        self.log = log
        self.remind_s = remind_s
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CONNECTING
        self._since = clock()
        self._error = ""
        self._failures = 0
        self._attempts = 0  # failed attempts in the current state
        self._logged = 0.0  # when the current state was last logged (first line or reminder)
        self._down_since = self._since  # when the link was last up (or created)
        self._ever_up = False

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._state, self._since, self._error, self._failures)

    @property
    def connected(self) -> bool:
        return self._state == CONNECTED

    def up(self) -> None:
        """The broker accepted the connection."""
        with self._lock:
            now = self.clock()
            before, down_since, again = self._state, self._down_since, self._ever_up
            self._state, self._since, self._error, self._attempts = CONNECTED, now, "", 0
            self._ever_up = True
        if before == CONNECTED:
            return
        if before == CONNECTING:
            self.log.info("%s connected to %s", self.name, self.peer)
        else:
            self.log.info("%s connected to %s %safter %s", self.name, self.peer,
                          "again " if again else "", duration(now - down_since))

    def closed(self) -> None:
        """The gateway closed the connection itself (stopping): news, not a problem."""
        with self._lock:
            was = self._state
            self._state, self._since, self._error = DISCONNECTED, self.clock(), "closed"
        if was == CONNECTED:
            self.log.info("%s closed the connection to %s", self.name, self.peer)

    def down(self, state: str, error: str) -> None:
        """An attempt failed, or the connection was lost: ``state`` is DISCONNECTED or
        REFUSED, ``error`` says why in a few words."""
        if state not in (DISCONNECTED, REFUSED):
            raise ValueError(f"not a failure state: {state}")
        error = error if len(error) <= MAX_ERROR else error[:MAX_ERROR - 1] + "…"
        with self._lock:
            now = self.clock()
            before, old_error = self._state, self._error
            self._failures += 1
            changed = state != before or error != old_error
            if state != before:
                self._since = now
            if before == CONNECTED:
                self._down_since = now
            self._state, self._error = state, error
            self._attempts = 1 if changed else self._attempts + 1
            attempts, since = self._attempts, self._since
            remind = not changed and now - self._logged >= self.remind_s
            if changed or remind:
                self._logged = now
        if changed:  # a lost link is news; one that cannot be made is a problem
            level = logging.WARNING if before == CONNECTED else logging.ERROR
            self.log.log(level, "%s", self._first_line(before, state, error))
        elif remind:
            self.log.warning("%s still %s after %s (%d attempts): %s; retrying", self.name,
                             self._phrase(state), duration(now - since), attempts, error)
        else:
            self.log.debug("%s: attempt %d to reach %s failed: %s", self.name, attempts,
                           self.peer, error)

    def _phrase(self, state: str) -> str:
        return (f"refused by {self.peer}" if state == REFUSED
                else f"cannot reach {self.peer}")

    def _first_line(self, before: str, state: str, error: str) -> str:
        if before == CONNECTED:
            return f"{self.name} lost {self.peer}: {error}; reconnecting"
        if state == REFUSED:
            return f"{self.name}: {self.peer} refused the connection: {error}; retrying"
        return f"{self.name} cannot reach {self.peer}: {error}; retrying"
