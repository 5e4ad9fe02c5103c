"""What the anomaly detectors have learnt, kept in a file across gateway restarts.

Each series' detector (anomaly.py) learns its daily profile over days; a gateway that
forgot it at every restart (an upgrade, a reboot) would judge nothing for a day after
each. ``DetectorState`` saves every detector's numbers (``SeriesDetector.state()``) to
``<store>.detectors`` when the gateway stops and every ``SAVE_EVERY_S`` while it runs,
and loads them when it starts. The file is written whole to a temporary file, fsynced
and renamed over the old one, so a power cut leaves the old file or the new one, never
half of either; ``bytes_written`` counts what it costs the SD card.

The file is hostile like anything read from the medium: ``MAGIC``, a version, a CRC-32
over everything after the header, a size bound (``MAX_BYTES``), and every length and
number checked before use (``SeriesDetector.from_state``). A file that fails any check is
set aside as ``.detectors.corrupt`` and the detectors start afresh; ``load`` says why
(once), for the alarm. Layout, all little-endian: header ``MAGIC``, u8 version, u32
count, u32 crc; then per detector: u8 device id length and the id (UTF-8), u8 channel,
u8 quantity length and the quantity (ASCII), u16 number count and the numbers (f64).
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.anomaly import AnomalyConfig, SeriesDetector

log = logging.getLogger(__name__)

MAGIC = b"GEDS"
VERSION = 1
SAVE_EVERY_S = 6 * 3600.0
MAX_BYTES = 256 * 1024 * 1024  # about 180,000 series
_HEAD = struct.Struct("<4sBII")

Key = tuple[str, int, str]  # device, channel, quantity


def encode(detectors: Mapping[Key, SeriesDetector]) -> bytes:
    body = bytearray()
    for (device, channel, qty), det in detectors.items():
        d, q, v = device.encode(), qty.encode(), det.state()
        body += struct.pack("<B", len(d)) + d + struct.pack("<BB", channel, len(q)) + q
        body += struct.pack(f"<H{len(v)}d", len(v), *v)
    return _HEAD.pack(MAGIC, VERSION, len(detectors), zlib.crc32(body)) + bytes(body)


def decode(data: bytes, config: Callable[[str], AnomalyConfig]) -> dict[Key, SeriesDetector]:
    """The detectors of a file's bytes; ValueError naming the first problem."""
    if len(data) < _HEAD.size or len(data) > MAX_BYTES:
        raise ValueError(f"{len(data)} bytes")
    magic, version, count, crc = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a detector state file of this version")
    body = memoryview(data)[_HEAD.size:]
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    out: dict[Key, SeriesDetector] = {}
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(body):
            raise ValueError("truncated")
        pos += n
        return body[pos - n:pos]

    for _ in range(count):
        device = bytes(take(take(1)[0])).decode()
        channel, qlen = take(2)
        qty = bytes(take(qlen)).decode("ascii")
        (n,) = struct.unpack("<H", take(2))
        values = list(struct.unpack(f"<{n}d", take(8 * n)))
        key = (device, channel, qty)
        if key in out:
            raise ValueError(f"{key} twice")
        out[key] = SeriesDetector.from_state(config(qty), values)
    if pos != len(body):
        raise ValueError("bytes after the last detector")
    return out


class DetectorState:
    def __init__(self, path: str | Path, every_s: float = SAVE_EVERY_S) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self.bytes_written = 0
        self.saves = 0
        self.failures = 0
        self._next = time.monotonic() + every_s

    def keep(self, detectors: Mapping[Key, SeriesDetector], force: bool = False) -> None:
        """Save them if it is time (or ``force``: the gateway is stopping); a medium that
        cannot be written is logged (once a day at most) and tried again next time: the
        detectors in memory are unharmed."""
        if not force and time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            took = time.monotonic()
            size = self.save(detectors)
            log.info("saved %d detectors (%d bytes) in %.0f ms", len(detectors), size,
                     (time.monotonic() - took) * 1000)
        except OSError as e:
            if self.failures % 4 == 0:
                log.error("cannot save the detectors to %s: %s", self.path, e)
            self.failures += 1

    def load(self, config: Callable[[str], AnomalyConfig]
             ) -> tuple[dict[Key, SeriesDetector], str | None]:
        """The saved detectors, and why none were loaded if the file was damaged (it is
        then moved aside as evidence). A missing file is no problem: a new gateway."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None
        except OSError as e:
            return {}, f"cannot read {self.path}: {e.strerror}"
        try:
            return decode(data, config), None
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            aside = self.path.with_name(self.path.name + ".corrupt")
            try:
                os.replace(self.path, aside)
            except OSError:
                log.warning("cannot move %s aside", self.path)
            return {}, f"{self.path}: {e}; moved to {aside.name}"

    def save(self, detectors: Mapping[Key, SeriesDetector]) -> int:
        """Write them all (atomically); the bytes written. OSError if the folder cannot
        be written."""
        data = encode(detectors)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.bytes_written += len(data)
        self.saves += 1
        return len(data)
