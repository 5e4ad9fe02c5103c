"""The committer's writes to the store: batches with their marks, alarms, and the marks of
held readings; a full disk waited out as a reported state, never a hang or a loss.

``write`` commits a batch's records with the replay marks that take in its frames
(dedup.DurableMarks), retrying every second while the store cannot be written (disk
full, I/O errors): nothing is acknowledged meanwhile, the broker keeps the frames, the
failure is logged at once and then once a minute, ``blocked`` says why and since when
(status, metrics), and ``heartbeat`` keeps the watchdog fed. Stopping while blocked gives
the batch up and reloads the marks as the store has them, so the broker's redelivery
after the restart is not taken for a replay. ``save_marks`` writes the marks that held
readings moved once the cloud had them, at most every ``MARKS_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.dedup import Deduplicator, DurableMarks, Ident
from gateway.store import Store
from gateway.store_file import StoreError
from gateway.store_rows import Mark, Record

log = logging.getLogger(__name__)

MARKS_INTERVAL_S = 5.0  # held readings' marks reach the store at least this often


class StoreWriter:
    def __init__(self, store: Store, durable: DurableMarks, dedup: Deduplicator,
                 stop: threading.Event, heartbeat: Callable[[], None]) -> None:
        self.store = store
        self.durable = durable
        self.dedup = dedup
        self.stop = stop
        self.heartbeat = heartbeat
        self.failures = 0  # commits that failed (disk full, I/O error)
        self.blocked: tuple[float, str] | None = None  # (since, why) while commits fail
        self.abandoned = False  # a batch could not be stored at shutdown
        self._marks_saved = time.monotonic()

    def write(self, records: list[Record], idents: list[Ident], frames: int) -> bool:
        """Commit the records with the marks that take in their frames; False if the
        daemon stopped while the store could not be written."""
        failures = 0
        while True:
            try:
                self.durable.commit(self.store, records, idents)
                break
            except StoreError as e:
                # The same records and marks are retried until they fit.
                if failures == 0:
                    self.blocked = (time.time(), str(e))
                if failures % 60 == 0:  # at once, then once a minute
                    log.error("store: %s; %d frames wait, unacknowledged (retrying every "
                              "second)", e, frames)
                failures += 1
                self.failures += 1
                self.heartbeat()  # waiting for space is not a hang
                if self.stop.wait(1.0):
                    # Giving up at shutdown: forget the batch and take nothing after it
                    # (committing later frames first would make these look stale when
                    # the broker redelivers them, unacknowledged, after the restart).
                    self.reload_marks()
                    self.abandoned = True
                    return False
        if failures:
            log.warning("store: writable again after %d failed attempts (%.0f s)", failures,
                        time.time() - self.blocked[0] if self.blocked else 0)
            self.blocked = None
        self._marks_saved = time.monotonic()
        return True

    def alarms(self, records: list[Record], marks: dict[str, Mark] | None = None) -> bool:
        """Alarm records alone (a tick's findings, the store's own events); False (logged)
        if they could not be stored: they are lost, the readings are not."""
        try:
            self.store.commit(records, marks)
            return True
        except StoreError as e:
            log.error("store: %s; %d alarm events lost", e, len(records))
            return False

    def save_marks(self, force: bool = False) -> None:
        """The marks that held readings moved once the cloud had them (hold.py), at least
        every MARKS_INTERVAL_S: a crash may forget the last few seconds of them, which lets
        a replay of those readings through once (the cloud de-duplicates by identity) but
        loses nothing."""
        if not self.durable.dirty() or (
                not force and time.monotonic() - self._marks_saved < MARKS_INTERVAL_S):
            return
        try:
            self.durable.commit(self.store, [], [])
        except StoreError as e:
            log.warning("store: cannot save replay marks (%s); trying again later", e)
            return
        self._marks_saved = time.monotonic()

    def reload_marks(self) -> None:
        """After a batch could not be stored: the marks as the store has them."""
        marks = self.store.marks()
        self.dedup.reload(marks)
        self.durable.reload(marks)
