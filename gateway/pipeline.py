"""Commit: the stage between the ingest readers and the store (or the hold).

Readers (local MQTT, serial ports) put raw frames into the inbox (inbox.py) with an
acknowledgement and the device their source stands for. One committer thread takes what
arrived in the last ``commit_interval_ms`` (at most ``max_batch`` frames), passes each
through the one
verification boundary (verify.py: decode, authenticate, bind to its source, de-duplicate;
any failure is a counted rejection of that frame alone) and turns the accepted ones into
uplink records (records.py). Where a reading goes:

- while the cloud keeps up, into the **hold** (hold.py): the uplink sends it from memory
  and only the cloud's PUBACK releases its local PUBACK, so the SD card is not written
  for it at all; the marks it moves are saved once the cloud has it, at most every
  ``MARKS_INTERVAL_S`` (store_writer.py; dedup.DurableMarks: a persisted mark never
  covers a frame that exists only in memory, or the broker's redelivery of it would be
  dropped);
- otherwise into the store, with the devices' marks, in one transaction; only after the
  commit returns are the acknowledgements called (for MQTT: the PUBACK).

Either way a gateway killed at any instant has lost nothing it acknowledged. Rejected
frames are acknowledged at once (they must never come back). If the commit fails (disk
full), nothing is acknowledged and the batch is retried every second (store_writer.py), a
reported state that keeps the watchdog fed; the broker keeps the unacknowledged frames
meanwhile. Edge
checks (checks.py) run on each accepted frame and their alarms are committed with the
batch; a failing check costs only its alarms. After each batch the listeners given at
construction hear of it, in order (``Listener.committed``): the MQTT reader sends the
PUBACKs its acknowledgements collected, the uplink wakes, Home Assistant gets the states.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeGuard, cast

from gateway import events, records
from gateway.alarm import Alarm
from gateway.checks import EdgeChecks
from gateway.dedup import Deduplicator, DurableMarks, Ident
from gateway.detector_state import DetectorState
from gateway.devices import Device, Devices
from gateway.hold import Ack as HeldAck
from gateway.hold import Hold
from gateway.inbox import Ack, Inbox, Item
from gateway.keyring import Keyring
from gateway.protocol import Frame
from gateway.store import Store
from gateway.store_rows import TELEMETRY, Mark, Record
from gateway.store_writer import StoreWriter
from gateway.verify import INTERNAL_ERROR, Accepted, Verifier

__all__ = ["Listener", "Pipeline"]

log = logging.getLogger(__name__)

HOLD_MAX_RATE = 500.0  # frames/s; above it readings are committed (they share commits)


def _holdable(ack: Ack | None) -> TypeGuard[HeldAck]:
    """An acknowledgement that can wait for the cloud (hold.Ack): local MQTT, QoS 1."""
    current = getattr(ack, "current", None)
    return current is not None and bool(current())


class Listener(Protocol):
    def committed(self, frames: list[Frame], devices: Devices) -> None:
        """A batch is stored (or held) and its acknowledgements called: ``frames`` are
        its accepted frames (maybe none). Errors are logged; they never stop the
        committer."""


class Pipeline:
    def __init__(self, store: Store, devices: Devices, inbox: Inbox, *,
                 commit_interval_ms: int = 50, max_batch: int = 2000,
                 checks: EdgeChecks | None = None, hold: Hold | None = None,
                 durable: DurableMarks | None = None,
                 listeners: Sequence[Listener] = (),
                 detector_state: DetectorState | None = None,
                 keyring: Keyring | None = None) -> None:
        """``hold``: readings wait there for the cloud (its ``durable`` marks are the
        committer's); ``listeners`` hear of each batch, in this order; ``keyring``: the
        devices' rotated keys."""
        self.store = store
        self.inbox = inbox
        self.checks = checks
        self.kept = detector_state if checks is not None else None
        self.hold = hold
        self.listeners = tuple(listeners)
        self.alarms = 0
        self.devices = dict(devices)
        self._new_devices: dict[str, Device] | None = None
        marks = store.marks()
        self.dedup = Deduplicator(marks)  # live: every frame verified so far
        # What may be written: frames safe elsewhere (shared with the hold).
        self.durable = durable if durable is not None else DurableMarks(marks)
        self.verifier = Verifier(self.devices, self.dedup, keyring)
        self.rejected = self.verifier.rejected  # counted per reason, where they happen
        self.commit_interval_s = commit_interval_ms / 1000
        self.max_batch = max_batch
        self.accepted = 0
        self.missing = 0
        self.late = 0
        self.commits = 0
        self.progress = time.monotonic()  # the watchdog looks at this
        self._rate, self._rate_at = 0.0, time.monotonic()  # frames/s arriving, smoothed
        self._stop = threading.Event()
        self.writer = StoreWriter(store, self.durable, self.dedup, self._stop, self._beat)
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)

    def _beat(self) -> None:
        self.progress = time.monotonic()

    def set_devices(self, devices: Devices) -> None:
        """New registry (SIGHUP): keys and metadata; de-dup state is kept. The committer
        swaps it in between batches, so keys and metadata always change together."""
        self._new_devices = dict(devices)

    def _apply_devices(self) -> None:
        new, self._new_devices = self._new_devices, None
        if new is not None:
            self.devices = new
            self.verifier.set_devices(new)

    def start(self) -> None:
        if self.checks is not None and self.kept is not None:
            detectors, problem = self.kept.load(self.checks.anomaly_config)
            self.checks.restore(detectors)
            log.info("detectors: %d restored from %s", len(detectors), self.kept.path)
            if problem is not None:
                log.error("detectors start afresh: %s", problem)
                self._commit_events([events.detector_state_lost(problem, int(time.time() * 1000))])
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: commit what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._collect()
            self._store_events()
            if self.checks is not None and not self._stop.is_set():
                try:
                    events = self.checks.tick()
                except Exception:  # a bug in a check must not stop ingest
                    log.exception("edge checks: tick failed")
                    events = []
                if events:
                    self._commit_events(events)
                if self.kept is not None:
                    self.kept.keep(self.checks.detectors)
            failures = 0
            while batch:
                try:
                    self._process(batch)
                    break
                except Exception:
                    # Each frame's own problems end inside _process, and the store turns
                    # its failures into StoreError: this is a bug around them. Nothing
                    # was acknowledged: hold the batch and try again, as for a full disk,
                    # rather than drop it unacknowledged (which would wedge the broker's
                    # in-flight window until a reconnect).
                    if failures % 60 == 0:
                        log.exception("committer: batch of %d frames failed; retrying it "
                                      "every second (nothing acknowledged)", len(batch))
                    failures += 1
                    with contextlib.suppress(Exception):
                        self.writer.reload_marks()
                    if self._stop.wait(1.0):
                        self.writer.abandoned = True
                        return
            self.writer.save_marks()
            if not batch and self._stop.is_set():
                self.writer.save_marks(force=True)
                if self.checks is not None and self.kept is not None:
                    self.kept.keep(self.checks.detectors, force=True)
                return
            if self.writer.abandoned:
                return
            self.progress = time.monotonic()

    def _collect(self) -> list[Item]:
        inbox = self.inbox.queue
        try:
            first = inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.commit_interval_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(inbox.get(timeout=max(0.0, remaining))
                             if remaining > 0 else inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit_events(self, evs: list[Alarm], marks: dict[str, Mark] | None = None) -> None:
        if self.writer.alarms([records.alarm(e) for e in evs], marks):
            self.alarms += len(evs)
        else:
            self.rejected["alarm_not_stored"] += len(evs)

    def _store_events(self) -> None:
        """Alarms for what the store found wrong with itself (opening, a replacement while
        running, records that failed their checksum). After a replacement while running,
        every device's marks go into the new store: replays stay refused."""
        recoveries, bad = self.store.take_events()
        if not recoveries and not bad:
            return
        evs = [events.store_corrupt(r) for r in recoveries]
        if bad:
            evs.append(events.record_corrupt(bad, int(time.time() * 1000)))
        rewrite = any(r.cause == "runtime_error" for r in recoveries)
        self._commit_events(evs, self.durable.all() if rewrite else None)

    def _records(self, ok: Accepted, now: float) -> list[Record]:
        """The uplink records of one accepted frame: its reading, a gap event, alarms."""
        frame = ok.frame
        out = [records.reading(frame, self.devices[frame.device_id])]
        if ok.missing:
            self.missing += ok.missing
            out.append(records.alarm(events.gap(frame, ok.missing, int(now * 1000)),
                                     frame.boot, frame.seq))
        if ok.late:
            self.late += 1
        if frame.results:  # stored with the frame: forwarded and de-duplicated with it
            out.append(records.alarm(events.command_results(frame, int(now * 1000)),
                                     frame.boot, frame.seq))
        if self.checks is not None:
            try:
                alarms = self.checks.observe(frame, now)
            except Exception:  # the reading is good; only its checks are lost
                log.exception("edge checks failed on %s boot %d seq %d", frame.device_id,
                              frame.boot, frame.seq)
                alarms = []
            for ev in alarms:
                out.append(records.alarm(ev, frame.boot, frame.seq))
                self.alarms += 1
        return out

    def _process(self, batch: list[Item]) -> None:
        self._apply_devices()
        if self.hold is not None:
            self.hold.spill_stale()  # before anything that came after a local reconnect
        # The hold spares the card where each frame would have its own commit. Above
        # HOLD_MAX_RATE frames share commits anyway, and the store path's latency is lower.
        now_m = time.monotonic()
        elapsed = max(1e-3, now_m - self._rate_at)
        self._rate = 0.8 * self._rate + 0.2 * len(batch) / elapsed if elapsed < 5 else 0.0
        self._rate_at = now_m
        room = self.hold.room() if self.hold is not None and self._rate <= HOLD_MAX_RATE \
            else 0
        stored: list[Record] = []
        held: list[tuple[Record, HeldAck, Ident]] = []
        stored_idents: list[Ident] = []  # frames whose reading is in ``stored``
        frames: list[Frame] = []
        now = time.time()
        for raw, source, claimed, ack in batch:
            ok = self.verifier.verify(raw, source, claimed)
            if ok is None:
                continue
            try:
                recs = self._records(ok, now)
            except Exception:  # a bug: it costs this frame, counted, never its batch
                self.verifier.reject(INTERNAL_ERROR, source, "could not build its record")
                log.debug("record of %s failed", ok.frame.device_id, exc_info=True)
                continue
            frames.append(ok.frame)
            f = ok.frame
            ident = (f.device_id, f.boot, f.seq, f.unix_ms,
                     self.verifier.generation(f.device_id))
            if room and _holdable(ack):
                held.append((recs[0], ack, ident))  # the reading; its alarms are stored now
                recs = recs[1:]
                room -= 1
            else:
                stored_idents.append(ident)
            stored.extend(recs)
        for ev in self.verifier.take_events():  # replay_rejected, counter_reset
            if ev.type == "alarm":  # alarms name the device's place, as the checks' do
                info = self.devices.get(ev.device)
                ev = dataclasses.replace(ev, site=info.site if info else "",
                                         feeder=info.feeder if info else "")
            # Both kinds name the frame that made them (evidence boot, seq: integers).
            stored.append(records.alarm(ev, cast(int, ev["boot"]), cast(int, ev["seq"])))
            self.alarms += 1
        if stored:
            if not self.writer.write(stored, stored_idents, len(batch)):
                return
            self.commits += 1
        if held and self.hold is not None:
            self.hold.put(held)
        self.accepted += sum(r.priority == TELEMETRY for r in stored) + len(held)
        waiting = {id(a) for _, a, _ in held}
        self._acknowledge([a for *_, a in batch if a is not None and id(a) not in waiting],
                          frames)

    def _acknowledge(self, acks: list[Ack], frames: list[Frame]) -> None:
        """After the commit, each step on its own: none may fail the batch (it is stored)."""
        steps: list[Callable[[], object]] = [
            *acks,
            *(functools.partial(listener.committed, frames, self.devices)
              for listener in self.listeners),
        ]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("after a commit: %r failed (the frames are stored)", step)
