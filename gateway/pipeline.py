"""Verify and commit: the stage between the ingest readers and the store.

Readers (local MQTT, serial ports) ``submit`` raw frames with an acknowledgement callback.
One committer thread takes what arrived in the last ``commit_interval_ms`` (at most
``max_batch`` frames), authenticates and validates each frame (protocol.FrameDecoder),
de-duplicates it by (device, boot, seq), turns the accepted ones into uplink records, and
commits them with the devices' marks in one transaction. Only after the commit returns are
the acknowledgements called: for MQTT that sends the PUBACK, so a gateway killed at any
instant has lost nothing it acknowledged. Rejected frames are acknowledged too (they must
not come back), counted per reason and logged at most once per device and reason a minute.
If the commit fails (disk full), nothing is acknowledged and the batch is retried every
second; the broker keeps the unacknowledged frames meanwhile. Edge checks (checks.py) run
on each accepted frame, and their alarm events are committed in the same transaction.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gridedge.gateway.checks import EdgeChecks, Event
from gridedge.gateway.dedup import Deduplicator
from gridedge.gateway.errors import ProtocolError
from gridedge.gateway.payloads import iso_ms, reading_json
from gridedge.gateway.protocol import Frame, FrameDecoder
from gridedge.gateway.store import ALARM, TELEMETRY, Record, Store, StoreError

log = logging.getLogger(__name__)

Ack = Callable[[], None]
_JSON = json.JSONEncoder(separators=(",", ":"))  # alarm records (readings: reading_json)


@dataclass(frozen=True)
class DeviceInfo:
    key: bytes
    site: str = ""
    feeder: str = ""
    role: str = "meter"
    channels: tuple[str, ...] = ()

    @functools.cached_property
    def channel_names(self) -> dict[int, str]:
        return dict(enumerate(self.channels))


class RateLimitedLog:
    """Log a problem once per (device, reason) per interval; count every occurrence."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, device: str, reason: str, message: str) -> None:
        now = time.monotonic()
        key = (device, reason)
        if now - self._last.get(key, -1e9) >= self.interval_s:
            self._last[key] = now
            log.warning("%s from %s: %s", reason, device or "?", message)


class Pipeline:
    def __init__(self, store: Store, devices: Mapping[str, DeviceInfo],
                 commit_interval_ms: int = 50, max_batch: int = 2000,
                 checks: EdgeChecks | None = None) -> None:
        self.store = store
        self.checks = checks
        self.on_commit: Callable[[], None] | None = None  # e.g. wake the uplink
        # Sees each committed batch's accepted frames (Home Assistant states); its errors
        # are logged, never allowed to stop the committer.
        self.on_frames: Callable[[list[Frame]], None] | None = None
        # Called after each batch's acknowledgements (a reader that sends them together).
        self.after_acks: list[Callable[[], None]] = []
        self.alarms = 0
        self.devices = dict(devices)
        self._new_devices: dict[str, DeviceInfo] | None = None
        self.decoder = FrameDecoder({d: info.key for d, info in self.devices.items()})
        self.dedup = Deduplicator(store.marks())
        self.commit_interval_s = commit_interval_ms / 1000
        self.max_batch = max_batch
        self.inbox: queue.Queue[tuple[bytes, str, Ack | None]] = queue.Queue(maxsize=100_000)
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.missing = 0
        self.late = 0
        self.commits = 0
        self.store_failures = 0  # commits that failed (disk full, I/O error)
        self.progress = time.monotonic()  # the watchdog looks at this
        self._log = RateLimitedLog()
        self._stop = threading.Event()
        self._abandoned = False  # a batch could not be stored at shutdown
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)

    def set_devices(self, devices: Mapping[str, DeviceInfo]) -> None:
        """New registry (SIGHUP): keys and metadata; de-dup state is kept. The committer
        swaps it in between batches, so keys and metadata always change together."""
        self._new_devices = dict(devices)

    def _apply_devices(self) -> None:
        new, self._new_devices = self._new_devices, None
        if new is not None:
            self.devices = new
            self.decoder.keys = {d: info.key for d, info in new.items()}

    def submit(self, raw: bytes, source: str, ack: Ack | None = None) -> None:
        """Called by readers; blocks when the committer is far behind (back-pressure)."""
        self.inbox.put((raw, source, ack))

    def reject(self, reason: str, source: str, detail: str, device: str = "") -> None:
        """Count and log a frame a reader could not even hand over (e.g. serial CRC)."""
        self.rejected[reason] += 1
        self._log(device or source, reason, detail)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: commit what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if self.checks is not None and not self._stop.is_set():
                events = self.checks.tick()
                if events:
                    self._commit_events(events)
            if batch:
                try:
                    self._process(batch)
                except Exception:  # a bug must not kill the committer: nothing was acked
                    log.exception("committer: batch of %d frames failed; they stay "
                                  "unacknowledged and the broker will redeliver them",
                                  len(batch))
                    self.dedup.reload(self.store.marks())
                    self.rejected["internal_error"] += len(batch)
                    self._stop.wait(1.0)
            elif self._stop.is_set():
                return
            if self._abandoned:
                return
            self.progress = time.monotonic()

    def _collect(self) -> list[tuple[bytes, str, Ack | None]]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.commit_interval_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=max(0.0, remaining))
                             if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _verify(self, raw: bytes) -> tuple[Frame, int] | None:
        """The authenticated, new frame and how many frames were found missing before it."""
        try:
            frame = self.decoder.decode(raw)
        except ProtocolError as e:
            self.rejected[e.reason.value] += 1
            self._log(e.device_id or "", e.reason.value, e.detail)
            return None
        verdict = self.dedup.check(frame.device_id, frame.boot, frame.seq)
        if not verdict.accept:
            self.rejected[verdict.reason or "rejected"] += 1
            if verdict.reason != "duplicate":  # a resend is normal; these are not
                self._log(frame.device_id, verdict.reason or "rejected",
                          f"boot {frame.boot} seq {frame.seq} is older than what was "
                          "already accepted")
            return None
        if verdict.missing:
            self.missing += verdict.missing
            self._log(frame.device_id, "gap",
                      f"{verdict.missing} frame(s) missing before boot {frame.boot} "
                      f"seq {frame.seq}")
        if verdict.late:
            self.late += 1
        return frame, verdict.missing

    @staticmethod
    def gap_event(frame: Frame, missing: int, now: float) -> Event:
        """Frames lost upstream (a late one may still fill the gap; the cloud sees it then)."""
        return {"type": "event", "state": "event", "kind": "gap", "device": frame.device_id,
                "time": iso_ms(int(now * 1000)), "boot": frame.boot, "seq": frame.seq,
                "missing": missing}

    def record(self, frame: Frame) -> Record:
        info = self.devices[frame.device_id]  # decoded, so the registry knows the device
        body = reading_json(frame, info.site or None, info.feeder or None,
                            info.channel_names or None)
        return Record(TELEMETRY, frame.device_id, frame.boot, frame.seq, body.encode())

    @staticmethod
    def alarm_record(ev: Event, boot: int = 0, seq: int = 0) -> Record:
        # Unique per event: one frame can raise the same kind on several quantities, and a
        # device's (boot, seq) tells two events of one millisecond apart.
        ident = ":".join(str(ev.get(k, "")) for k in
                         ("kind", "state", "device", "feeder", "channel", "quantity", "time"))
        body = {"id": f"{ident}:{boot}:{seq}", **ev}
        return Record(ALARM, ev.get("device") or ev.get("feeder", ""), boot, seq,
                      _JSON.encode(body).encode())

    def _commit_events(self, events: list[Event]) -> None:
        try:
            self.store.commit([self.alarm_record(e) for e in events])
            self.alarms += len(events)
        except StoreError as e:
            log.error("store: %s; %d alarm events lost", e, len(events))
            self.rejected["alarm_not_stored"] += len(events)

    def _process(self, batch: list[tuple[bytes, str, Ack | None]]) -> None:
        self._apply_devices()
        records = []
        frames: list[Frame] = []
        now = time.time()
        for raw, _source, _ack in batch:
            verified = self._verify(raw)
            if verified is not None:
                frame, missing = verified
                frames.append(frame)
                records.append(self.record(frame))
                if missing:
                    records.append(self.alarm_record(self.gap_event(frame, missing, now),
                                                     frame.boot, frame.seq))
                if self.checks is not None:
                    for ev in self.checks.observe(frame, now):
                        records.append(self.alarm_record(ev, frame.boot, frame.seq))
                        self.alarms += 1
        touched = {r.device for r in records if r.priority == TELEMETRY}
        marks = {d: self.dedup.marks[d] for d in touched}
        failures = 0
        while True:
            try:
                self.store.commit(records, marks)
                break
            except StoreError as e:
                # The same records and marks are retried until they fit (the in-memory
                # marks already include this batch). Nothing is acknowledged meanwhile.
                if failures % 60 == 0:  # at once, then once a minute
                    log.error("store: %s; %d frames wait, unacknowledged (retrying every "
                              "second)", e, len(batch))
                failures += 1
                self.store_failures += 1
                if self._stop.wait(1.0):
                    # Giving up at shutdown: forget the batch and take nothing after it
                    # (committing later frames first would make these look stale when
                    # the broker redelivers them, unacknowledged, after the restart).
                    self.dedup.reload(self.store.marks())
                    self._abandoned = True
                    return
        if failures:
            log.warning("store: writable again after %d failed attempts", failures)
        self.accepted += sum(r.priority == TELEMETRY for r in records)
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit()
        for _raw, _source, ack in batch:
            if ack is not None:
                ack()
        for flush in self.after_acks:
            flush()
        if self.on_frames is not None and frames:
            try:
                self.on_frames(frames)
            except Exception:
                log.exception("after-commit hook failed (the frames are stored)")
