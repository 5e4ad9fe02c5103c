"""De-duplication by identity (device, boot, seq), with gap accounting and no lock-out.

Per device the gateway keeps a ``store.Mark``: its highest (boot, seq), a window of which
of the ``WINDOW`` sequence numbers up to it were seen, the newest device time (unix ms)
accepted so far, and the *generation* the mark was made under: the device key's
fingerprint (and ``+N`` after ``gridedge-gateway devices resync``). Marks are persisted
with the records they admit, so a restart forgets nothing. A frame is:

- new (accepted) when its boot is newer, or its seq is above the mark, or it is a late
  frame inside the window that was not seen yet. The window (1024) is at least a meter's
  largest ring (``ring_size`` ≤ 1024), so a meter that resends its ring after newer
  frames loses nothing by design;
- a duplicate (rejected) when the window says it was seen - QoS 1 redelivery, a ring
  resent after a reconnect, a frame heard on two links;
- replayed (rejected) when its boot is older than the device's current boot, or when
  it would move the mark forward but carries a device time no newer than the mark's
  ``floor_ms`` (the newest time accepted before the counters last went back: it belongs
  to a discarded counter epoch);
- stale (rejected) when it is older than the window.

Two ways out of a lock-out, so a device is never shut out silently for good:

- a mark made under another generation is void: a re-provisioned device (new key), or
  one an operator resynced, starts afresh;
- a frame the rules above would reject as replayed or stale, but whose device time is
  newer than every frame accepted from the device so far, cannot be a copy of any of
  them (the MAC covers the time): the device's counters went back (factory reset, lost
  state file) or had jumped forward (a corrupt counter near 2^32). It is accepted and
  restarts the mark (``Verdict.reset``), whose floor becomes the newest time accepted
  before, so no frame of the old epoch is accepted again. Without a device clock there
  is no such proof; the verify stage then raises an alarm and the operator resyncs.

With clocks, no frame is ever accepted twice, whatever happens to its counters
(tests/gateway/test_dedup.py holds that as a property).

``check`` updates the in-memory marks at once, so frames of one batch see each other; if
the batch then fails to commit, ``reload`` the marks from the store. Pure logic; the
verify stage owns an instance.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.store import Store
from gateway.store_rows import Mark, Record

WINDOW = 1024
MASK = (1 << WINDOW) - 1


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: str | None = None  # "duplicate", "replayed", "stale" when rejected
    missing: int = 0  # frames newly found missing before this one
    late: bool = False  # a frame that fills an earlier gap
    reset: Mark | None = None  # accepted on a newer device time: the mark it replaced


class Deduplicator:
    def __init__(self, marks: dict[str, Mark] | None = None) -> None:
        self.marks: dict[str, Mark] = dict(marks or {})

    def check(self, device: str, boot: int, seq: int, unix_ms: int | None = None,
              generation: str = "") -> Verdict:
        """The verdict; an accepted frame's identity is recorded at once."""
        verdict, mark = self._judge(device, boot, seq, unix_ms, generation)
        if mark is not None:
            self.marks[device] = mark
        return verdict

    def reload(self, marks: dict[str, Mark]) -> None:
        self.marks = dict(marks)

    def _judge(self, device: str, boot: int, seq: int, unix_ms: int | None,
               generation: str) -> tuple[Verdict, Mark | None]:
        m = self.marks.get(device)
        if m is not None and m.generation and m.generation != generation:
            m = None  # made under another key (or before a resync): void
        t = unix_ms or 0
        if m is None:
            return Verdict(True), Mark(boot, seq, 1, t, generation)
        newest, floor = max(m.unix_ms, t), m.floor_ms
        if t and t <= floor:  # a frame of a counter epoch that was left behind
            return Verdict(False, "replayed"), None
        if boot > m.boot:
            return Verdict(True, missing=seq), Mark(boot, seq, 1, newest, generation, floor)
        if boot == m.boot and seq > m.seq:
            shift = seq - m.seq
            window = ((m.window << shift) | 1) & MASK if shift < WINDOW else 1
            return Verdict(True, missing=shift - 1), Mark(boot, seq, window, newest,
                                                          generation, floor)
        age = m.seq - seq
        if boot == m.boot and age < WINDOW:
            if m.window >> age & 1:
                return Verdict(False, "duplicate"), None
            return Verdict(True, late=True), Mark(boot, m.seq, m.window | (1 << age),
                                                  newest, generation, floor)
        if m.unix_ms and t > m.unix_ms:  # see the module docstring: a proof of newness
            return Verdict(True, reset=m), Mark(boot, seq, 1, t, generation, m.unix_ms)
        return Verdict(False, "replayed" if boot < m.boot else "stale"), None


Ident = tuple[str, int, int, int | None, str]  # device, boot, seq, unix ms, generation


class DurableMarks:
    """The marks that may be persisted: only of frames that are safe elsewhere - committed
    to the store, or acknowledged by the cloud (hold.py). A persisted mark makes every
    frame it covers a duplicate after a restart; if it covered a frame that was still only
    in memory, the broker's redelivery of that frame would be dropped as a duplicate and
    the frame lost. So the committer judges frames against the live marks (``Deduplicator``)
    but writes these, which take in a frame only in the transaction that stores it, or once
    the cloud has it. Thread-safe: the committer and the uplink both commit and release."""

    def __init__(self, marks: dict[str, Mark] | None = None) -> None:
        self._dedup = Deduplicator(marks)
        self._dirty: set[str] = set()  # marks moved by released frames, not yet written
        self._lock = threading.Lock()

    def commit(self, store: Store, records: Sequence[Record], idents: Iterable[Ident]) -> None:
        """Store ``records`` with the marks that take in ``idents`` (their frames) and any
        unwritten ones, in one transaction; the marks change only if it commits."""
        with self._lock:
            idents = list(idents)
            known = self._dedup.marks
            trial = Deduplicator({i[0]: known[i[0]] for i in idents if i[0] in known})
            for ident in idents:
                trial.check(*ident)
            moved = {d for d, m in trial.marks.items() if self._dedup.marks.get(d) != m}
            marks = {d: known[d] for d in self._dirty if d in known}
            marks.update((d, trial.marks[d]) for d in moved)
            store.commit(records, marks)  # StoreError: nothing changes here
            self._dedup.marks.update((d, trial.marks[d]) for d in moved)
            self._dirty.clear()

    def release(self, idents: Iterable[Ident]) -> None:
        """Frames the cloud acknowledged: their marks move now, and are written later."""
        with self._lock:
            for ident in idents:
                if self._dedup.check(*ident).accept:
                    self._dirty.add(ident[0])

    def dirty(self) -> bool:
        return bool(self._dirty)

    def all(self) -> dict[str, Mark]:
        with self._lock:
            return dict(self._dedup.marks)

    def reload(self, marks: dict[str, Mark]) -> None:
        with self._lock:
            self._dedup.reload(marks)
            self._dirty.clear()
