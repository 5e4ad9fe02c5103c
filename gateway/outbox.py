"""What the uplink sends next from the store, and what it deletes once the cloud has it.

``Outbox`` keeps a cursor per priority (alarms, telemetry) so each batch starts after the
last one sent, lets a partial telemetry batch wait up to ``batch_delay_ms`` to fill,
meters the drain with a token bucket (``drain_rate`` records/s after an outage, so a
backlog does not flood the cloud), and deletes delivered records many per transaction:
one commit (and fsync) per PUBACK would cap the uplink near 2,000 messages/s. A crash
before the delete commits only means those records are sent again; the cloud
de-duplicates. After a lost connection ``rewind`` starts both cursors over, so what was
not acknowledged is read and sent again; rows delivered but not yet deleted are skipped.
"""

from __future__ import annotations

import logging
import time

from gateway.config import UplinkSection
from gateway.store import Store
from gateway.store_file import StoreError
from gateway.store_rows import ALARM, TELEMETRY, Stored

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.05  # delivered records are deleted at least this often...
FLUSH_AT = 5000  # ...or as soon as this many are waiting


class Outbox:
    def __init__(self, store: Store, cfg: UplinkSection) -> None:
        self.store = store
        self.cfg = cfg
        self._cursor = {ALARM: 0, TELEMETRY: 0}
        self._acked: set[int] = set()  # delivered, not yet deleted
        self._flushed = time.monotonic()
        self._flush_error_logged = -1e9
        self._tokens = float(cfg.batch_size)
        self._last_refill = time.monotonic()
        self.batch_due: float | None = None  # unix time a partial batch goes anyway

    # -- what to send ---------------------------------------------------------------
    def limit(self) -> int:
        """How many records the next batch may hold (0: the drain rate says wait)."""
        if not self.cfg.drain_rate:
            return self.cfg.batch_size
        now = time.monotonic()
        self._tokens = min(float(max(self.cfg.drain_rate, self.cfg.batch_size)),
                           self._tokens + (now - self._last_refill) * self.cfg.drain_rate)
        self._last_refill = now
        if self._tokens < 1:
            return 0
        return max(1, min(self.cfg.batch_size, int(self._tokens)))

    def alarms(self, limit: int) -> list[Stored]:
        return self._fetch(ALARM, limit)

    def telemetry(self, limit: int) -> list[Stored] | None:
        """Stored telemetry; [] while a partial batch waits up to ``batch_delay_ms`` to
        fill; None when the store has none (caught up)."""
        rows = self._fetch(TELEMETRY, limit)
        if not rows:
            self.batch_due = None
            return None
        due = (rows[0].created_ms + self.cfg.batch_delay_ms) / 1000
        if len(rows) < limit and time.time() < due:
            self.batch_due = due  # wait a little for a fuller batch
            return []
        self.batch_due = None
        return rows

    def sent(self, rows: list[Stored]) -> None:
        """A batch is on its way: the next starts after it."""
        self._cursor[rows[0].priority] = rows[-1].id
        self.spent(len(rows))

    def spent(self, count: int) -> None:
        """``count`` records went out (stored or held): the drain rate's tokens."""
        if self.cfg.drain_rate:
            self._tokens -= count

    def _fetch(self, priority: int, limit: int) -> list[Stored]:
        """Rows after the cursor, skipping those delivered before a reconnect whose
        delete is still pending (the cursor moves past them, so they never block)."""
        while True:
            rows = self.store.fetch(priority, self._cursor[priority], limit)
            if not self._acked or not rows:
                return rows
            kept = [r for r in rows if r.id not in self._acked]
            if kept:
                return kept
            self._cursor[priority] = rows[-1].id

    # -- what arrived -------------------------------------------------------------------
    def delivered(self, ids: list[int]) -> None:
        self._acked.update(ids)

    def flush(self, force: bool = False) -> None:
        """Delete the delivered records, many per transaction."""
        if not self._acked:
            return
        now = time.monotonic()
        if not force and len(self._acked) < FLUSH_AT and now - self._flushed < FLUSH_EVERY_S:
            return
        try:
            self.store.delete(sorted(self._acked))
        except StoreError as e:
            if now - self._flush_error_logged >= 60:
                log.error("uplink: %s; %d delivered records stay until it works",
                          e, len(self._acked))
                self._flush_error_logged = now
            return
        self._acked.clear()
        self._flushed = now

    def rewind(self) -> None:
        """After a lost connection: delete what was delivered, send the rest again."""
        self.flush(force=True)
        self._cursor = {ALARM: 0, TELEMETRY: 0}
