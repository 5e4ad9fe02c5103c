"""De-duplication by identity (device, boot, seq), with sequence-gap accounting.

Per device the gateway keeps its highest (boot, seq) and a 64-frame window of which recent
sequence numbers it has seen (``store.Mark``, persisted with every committed batch, so a
restart forgets nothing). A frame is:

- new (accepted) when its boot is newer, or its seq is above the mark, or it is a late
  frame inside the window that was not seen yet;
- a duplicate (rejected) when the window says it was seen - QoS 1 redelivery, a device
  resending its ring after a reconnect, a frame heard on two links;
- replayed (rejected) when its boot is older than the device's current boot;
- stale (rejected) when it is older than the window.

A jump in seq reports the frames missing so far (lost upstream unless they still arrive
late, which is counted too). ``check`` updates the in-memory marks at once, so frames of
one batch see each other; if the batch then fails to commit, ``reload`` the marks from
the store. This module is pure logic; the verify stage owns an instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridedge.gateway.store import Mark

WINDOW = 64
MASK = (1 << WINDOW) - 1


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: str | None = None  # "duplicate", "replayed", "stale" when rejected
    missing: int = 0  # frames newly found missing before this one
    late: bool = False  # a frame that fills an earlier gap


class Deduplicator:
    def __init__(self, marks: dict[str, Mark] | None = None) -> None:
        self.marks: dict[str, Mark] = dict(marks or {})

    def check(self, device: str, boot: int, seq: int) -> Verdict:
        """The verdict; an accepted frame's identity is recorded at once."""
        verdict, mark = self._judge(device, boot, seq)
        if mark is not None:
            self.marks[device] = mark
        return verdict

    def reload(self, marks: dict[str, Mark]) -> None:
        self.marks = dict(marks)

    def _judge(self, device: str, boot: int, seq: int) -> tuple[Verdict, Mark | None]:
        m = self.marks.get(device)
        if m is None:
            return Verdict(True), Mark(boot, seq, 1)
        if boot > m.boot:
            return Verdict(True, missing=seq), Mark(boot, seq, 1)
        if boot < m.boot:
            return Verdict(False, "replayed"), None
        if seq > m.seq:
            shift = seq - m.seq
            window = ((m.window << shift) | 1) & MASK if shift < WINDOW else 1
            return Verdict(True, missing=shift - 1), Mark(boot, seq, window)
        age = m.seq - seq
        if age >= WINDOW:
            return Verdict(False, "stale"), None
        if m.window >> age & 1:
            return Verdict(False, "duplicate"), None
        return Verdict(True, late=True), Mark(boot, m.seq, m.window | (1 << age))
