"""Hold: readings that go to the cloud straight from memory, not through the SD card.

Committing every frame to SQLite wrote ~18 KB per frame at 20 frames/s (whole 4 KiB
pages: the record, two indexes, the marks, then all of them again for the delete) - the
classic way a Raspberry Pi's SD card dies. While the cloud keeps up, nothing needs to touch
the card: the local broker already holds every frame the gateway has not acknowledged,
and will deliver it again after any crash. So, while the hold is open, the committer puts
a verified reading here instead of in the store, *without* acknowledging it to the local
broker; the uplink publishes it from here; only the cloud's PUBACK releases the local
PUBACK. Nothing acknowledged lives only in memory, at any instant:

- the cloud link drops, a held reading waits longer than ``max_age_s`` (a slow cloud),
  or the gateway stops: everything held is *spilled* - committed to the store (with the
  devices' marks), then acknowledged - and the hold closes until the uplink has emptied
  the store again;
- the local broker connection drops: the held readings' acknowledgements now name packet
  ids of a dead connection (``Ack.current`` is false); the broker will deliver them again
  on the new one, and de-duplication would acknowledge those copies at once. So before
  the committer handles anything that arrived after a reconnect, it spills what is held
  (``spill_stale``): they are durable before their copies are acknowledged;
- a spill that cannot commit (disk full) keeps them held, unacknowledged: the broker
  still has them.

The de-duplication marks written to the store (dedup.DurableMarks) take in a held reading
only when it is safe - committed by a spill, or acknowledged by the cloud - never while it
is only here: a written mark covering it would make the restarted gateway drop the
broker's redelivery of it as a duplicate.

Only readings whose acknowledgement can be held are held (local MQTT, QoS 1; not serial,
whose frames exist nowhere else); at most ``max_records`` at a time, fewer than a broker's
in-flight window for one client (Mosquitto's default is 20), so holding never throttles
ingest. Thread-safe: the committer puts, the uplink sends and delivers, either spills.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.dedup import DurableMarks, Ident
from gateway.store import Store
from gateway.store_file import StoreError
from gateway.store_rows import Record

log = logging.getLogger(__name__)


class Ack(Protocol):
    def __call__(self) -> None: ...

    def current(self) -> bool:
        """True while the connection the frame came by is the one that is up."""
        ...


@dataclass(frozen=True, slots=True)
class Held:
    record: Record
    ack: Ack
    ident: Ident  # its frame's identity, for the marks once it is safe (dedup.DurableMarks)
    since: float  # monotonic, when it was held


class Hold:
    def __init__(self, store: Store, durable: DurableMarks, flush_acks: Callable[[], None],
                 max_records: int = 16, max_age_s: float = 2.0) -> None:
        """``durable``: the marks to persist, which take in a held reading only once it is
        safe; ``flush_acks``: sends the acknowledgements the acks collected."""
        self.store = store
        self.durable = durable
        self._flush_acks = flush_acks
        self.max_records = max_records
        self.max_age_s = max_age_s
        self.lock = threading.RLock()
        self._queue: list[Held] = []  # not yet published
        self._sent: dict[int, list[Held]] = {}  # cloud message id -> what it carries
        self._open = False
        self._failed_at = self._logged_at = -1e9  # the last refused spill, and its log line
        self.held = 0  # readings that went to the cloud without touching the store
        self.spilled = 0  # readings committed after all (slow or lost cloud, reconnects)

    # -- the uplink opens it when it is connected and the store is empty ---------------
    def open(self) -> None:
        with self.lock:
            self._open = True

    # -- committer ----------------------------------------------------------------
    def room(self) -> int:
        """How many more readings may be held now (0 while closed)."""
        with self.lock:
            if not self._open:
                return 0
            return max(0, self.max_records - len(self._queue) -
                       sum(len(v) for v in self._sent.values()))

    def put(self, items: Sequence[tuple[Record, Ack, Ident]]) -> None:
        now = time.monotonic()
        with self.lock:
            self._queue.extend(Held(r, a, i, now) for r, a, i in items)
            self.held += len(items)

    def spill_stale(self) -> None:
        """Before handling what arrived after a local reconnect: spill the readings whose
        acknowledgement belongs to the old connection (see the module docstring)."""
        with self.lock:
            if any(not h.ack.current() for h in self._all()):
                self.spill("the local broker connection changed")

    # -- uplink ---------------------------------------------------------------------
    def send(self, limit: int, delay_s: float,
             publish: Callable[[list[Held]], int | None]) -> tuple[int, float | None]:
        """Publish the next batch if one is due: ``limit`` readings, or fewer once the
        oldest has waited ``delay_s``. ``publish`` returns the cloud message id, or None
        if paho refused it (the readings stay held). Taking, publishing and recording the
        id happen under the lock, so a spill never misses a reading in between. Returns
        (readings sent, monotonic time the next partial batch is due, if one waits)."""
        with self.lock:
            if not self._queue:
                return 0, None
            due = self._queue[0].since + delay_s
            if len(self._queue) < limit and time.monotonic() < due:
                return 0, due
            items = self._queue[:limit]
            mid = publish(items)
            if mid is None:
                return 0, None
            del self._queue[:len(items)]
            self._sent[mid] = items
            return len(items), None

    def waiting(self) -> bool:
        return bool(self._queue)

    def delivered(self, mid: int) -> int:
        """The cloud acknowledged message ``mid``: release its readings' local PUBACKs."""
        with self.lock:
            items = self._sent.pop(mid, [])
        self.durable.release(h.ident for h in items)  # in the cloud now: marks may move
        self._release(items)
        return len(items)

    def overdue(self) -> bool:
        now = time.monotonic()
        with self.lock:
            return any(now - h.since > self.max_age_s for h in self._all())

    def spill(self, why: str) -> bool:
        """Commit everything held to the store, then acknowledge it; close the hold.
        False (everything still held, unacknowledged) if the store cannot be written."""
        with self.lock:
            self._open = False
            items = self._all()
            if not items:
                return True
            now = time.monotonic()
            if now - self._failed_at < 1.0:  # the store just refused: try once a second
                return False
            try:
                self.durable.commit(self.store, [h.record for h in items],
                                    [h.ident for h in items])
            except StoreError as e:
                if now - self._logged_at >= 60:
                    log.error("hold: cannot spill %d readings (%s): they stay "
                              "unacknowledged at the local broker", len(items), e)
                    self._logged_at = now
                self._failed_at = now
                return False
            self._failed_at = self._logged_at = -1e9
            self._queue, self._sent = [], {}
            self.spilled += len(items)
        log.info("hold: %s: %d readings committed to the store", why, len(items))
        self._release(items)
        return True

    def _all(self) -> list[Held]:
        return [*self._queue, *(h for v in self._sent.values() for h in v)]

    def _release(self, items: list[Held]) -> None:
        for h in items:
            if h.ack.current():  # an old connection's id would name another message
                h.ack()
        if items:
            self._flush_acks()
