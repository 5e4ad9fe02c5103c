"""Verify: the one boundary where untrusted bytes become an accepted frame or a rejection.

Every frame a reader hands over (local MQTT, serial) crosses ``Verifier.verify`` and
nothing else: decode and authenticate (protocol.FrameDecoder, on strict_cbor), bind the
key id to the source the frame came by (its MQTT topic or serial port, when that names a
device), then de-duplicate by (device, boot, seq). Whatever goes wrong - a declared
``ProtocolError``, a de-duplication verdict, or an exception nobody foresaw - becomes one
counted reason in ``rejected`` and at most one log line per device and reason a minute;
the caller only ever sees an ``Accepted`` or ``None``, so one bad frame costs only itself.
Every map here is bounded: the log limiter keeps at most ``MAX_KEYS`` (device, reason)
entries and a few lines per reason a minute, however many device ids an attacker invents.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from gateway import events
from gateway.alarm import Alarm
from gateway.dedup import Deduplicator
from gateway.devices import Devices
from gateway.errors import ProtocolError
from gateway.keyring import GRACE_S, Keyring
from gateway.protocol import Frame, FrameDecoder

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal_error"  # an exception the decoder does not declare: a bug


@dataclass(frozen=True, slots=True)
class Accepted:
    frame: Frame
    missing: int  # frames newly found missing before this one
    late: bool  # it fills an earlier gap


class RateLimitedLog:
    """Log a problem once per (device, reason) per interval and at most ``burst`` lines
    per reason per interval; say how many were held back. Bounded: the oldest of more
    than ``max_keys`` entries is forgotten (at worst, it is logged again)."""

    def __init__(self, interval_s: float = 60.0, burst: int = 10, max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self.max_keys = max_keys
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._window: dict[str, tuple[float, int]] = {}  # reason -> (window start, lines)
        self._held: Counter[str] = Counter()  # reason -> lines held back since the last

    def __call__(self, device: str, reason: str, message: str) -> None:
        now = time.monotonic()
        key = (device, reason)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return
        start, lines = self._window.get(reason, (now, 0))
        if now - start >= self.interval_s:
            start, lines = now, 0
        if lines >= self.burst:
            self._held[reason] += 1
            return
        self._window[reason] = (start, lines + 1)
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        held = self._held.pop(reason, 0)
        more = f" ({held} more like it not logged)" if held else ""
        log.warning("%s from %s: %s%s", reason, device or "?", message, more)


class Verifier:
    def __init__(self, devices: Devices, dedup: Deduplicator,
                 keyring: Keyring | None = None) -> None:
        """``devices``: keys, and the generation each device's marks are bound to;
        ``keyring``: rotated keys (a frame MACed with a device's next key makes it its
        key, keyring.py)."""
        self.keyring = keyring
        self.decoder = FrameDecoder({}, self._more if keyring is not None else None)
        self.dedup = dedup
        self.rejected: Counter[str] = Counter()  # keys: Reason values and dedup verdicts
        self.log = RateLimitedLog()
        self.events: list[Alarm] = []  # replay_rejected, counter_reset: for the batch
        self._refused: set[str] = set()  # devices with a raised replay_rejected alarm
        self.devices = devices
        self.set_devices(devices)

    def set_devices(self, devices: Devices) -> None:
        ring = self.keyring
        self.decoder.keys = {d: ring.keys(d, dev).current if ring else dev.key
                             for d, dev in devices.items()}
        self.devices = devices
        self._refused &= set(devices)

    def _more(self, device: str) -> tuple[bytes, ...]:
        dev = self.devices.get(device)
        return self.keyring.keys(device, dev).others if self.keyring and dev else ()

    def _rotated(self, device: str, used: bytes) -> None:
        """A frame verified with a key other than the device's: if it was its next one,
        that is its key from now on."""
        dev = self.devices.get(device)
        if self.keyring is not None and dev is not None and \
                self.keyring.promote(device, dev, used):
            keys = dict(self.decoder.keys)
            keys[device] = used
            self.decoder.keys = keys
            log.info("%s: uses its new key now; the old one verifies for %.0f s more",
                     device, GRACE_S)

    def generation(self, device: str) -> str:
        dev = self.devices.get(device)
        return dev.generation if dev is not None else ""

    def reject(self, reason: str, source: str, detail: str, device: str = "") -> None:
        """Count and log one rejected frame (also for readers: a serial CRC error)."""
        self.rejected[reason] += 1
        self.log(device or source, reason, detail)

    def verify(self, raw: bytes | ProtocolError, source: str,
               claimed: str | None = None) -> Accepted | None:
        """The authenticated, new frame; or None, counted. ``raw`` may be the reader's
        own rejection (a message too large to read); ``claimed``: the device the source
        stands for (the topic's device level, a serial port's configured device)."""
        try:
            if isinstance(raw, ProtocolError):
                raise raw
            frame = self.decoder.decode(raw, claimed)
            device = frame.device_id
            if self.decoder.used is not None:
                self._rotated(device, self.decoder.used)
            mark = self.dedup.marks.get(device)
            verdict = self.dedup.check(device, frame.boot, frame.seq, frame.unix_ms,
                                       self.generation(device))
        except ProtocolError as e:
            self.reject(e.reason.value, source, e.detail, e.device_id or "")
            return None
        except Exception as e:  # a bug in decoding: it must cost only this frame
            self.reject(INTERNAL_ERROR, source, f"{type(e).__name__} while verifying")
            log.debug("frame from %s raised", source, exc_info=True)
            return None
        now_ms = int(time.time() * 1000)
        if not verdict.accept:
            reason = verdict.reason or "rejected"
            self.rejected[reason] += 1
            if reason == "duplicate":  # a resend is normal; these are not
                return None
            self.log(device, reason, f"boot {frame.boot} seq {frame.seq} is older than what "
                     "was already accepted")
            if mark is not None and device not in self._refused:
                self._refused.add(device)
                self.events.append(events.replay_rejected(device, "raised", reason, frame,
                                                          mark, now_ms))
            return None
        if device in self._refused:
            self._refused.discard(device)
            self.events.append(events.replay_rejected(device, "cleared", "accepted", frame,
                                                      self.dedup.marks[device], now_ms))
        if verdict.reset is not None:
            log.warning("%s: boot %d seq %d is below what was accepted (boot %d seq %d) but "
                        "its clock is newer than any frame before: its counters were reset; "
                        "accepted, the replay window starts again", device, frame.boot,
                        frame.seq, verdict.reset.boot, verdict.reset.seq)
            self.events.append(events.counter_reset(frame, verdict.reset, now_ms))
        if verdict.missing:
            self.log(device, "gap", f"{verdict.missing} frame(s) missing before "
                     f"boot {frame.boot} seq {frame.seq}")
        return Accepted(frame, verdict.missing, verdict.late)

    def take_events(self) -> list[Alarm]:
        evs, self.events = self.events, []
        return evs
