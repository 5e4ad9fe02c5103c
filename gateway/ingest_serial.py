"""Ingest from serial ports: COBS + CRC-32 frames (docs/protocol.md section 5) via pyserial.

One thread per port reads what arrives, splits it into frames at the 0x00 delimiters
(framing.Deframer: bounded buffer, resync after garbage) and hands each message to the
pipeline, with the port's configured device (if any) that its key id must match. Framing
errors are counted per reason and never stop the reader. When the port
vanishes (USB adapter unplugged, device rebooting) the reader closes it and tries to open
it again with backoff from 1 s up to 30 s, logging once per outage; configure a stable
path such as /dev/serial/by-id/... so the same device comes back under the same name.

The serial link has no acknowledgements: a frame is durable once its batch is committed
(within the commit interval), and the gateway reports sequence gaps for what was lost on
the line. Down the same line go commands (``send``, for the commander: framed alike,
after one 0x00 so the meter is in step whatever it saw before); ``reachable`` is whether
the port is open (a meter may report only every few minutes: it is not waited for, and
what it does not answer is sent again).
"""

from __future__ import annotations

import logging
import threading
import time

import serial

from gateway.config import SerialPort
from gateway.errors import ProtocolError
from gateway.framing import Deframer, encode
from gateway.inbox import Inbox

log = logging.getLogger(__name__)
BACKOFF_MAX_S = 30.0
WRITE_TIMEOUT_S = 2.0


class SerialIngest:
    def __init__(self, cfg: SerialPort, inbox: Inbox) -> None:
        self.cfg = cfg
        self.inbox = inbox
        self.source = f"serial:{cfg.port}"
        self.opens = 0
        self.frames = 0
        self.errors = 0
        self.bytes = 0
        self.is_open = False
        self.sent = 0
        self.progress = time.monotonic()
        self._port: serial.Serial | None = None
        self._write = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.source, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 1.0
        failing_since: float | None = None
        while not self._stop.is_set():
            self.progress = time.monotonic()
            try:
                port = serial.Serial(self.cfg.port, self.cfg.baud, timeout=0.2,
                                     write_timeout=WRITE_TIMEOUT_S)
            except (serial.SerialException, OSError) as e:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("%s: cannot open (%s); retrying with backoff", self.source, e)
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            if failing_since is not None:
                log.info("%s: open again after %.0f s", self.source,
                         time.monotonic() - failing_since)
            failing_since = None
            backoff = 1.0
            self.opens += 1
            self.is_open = True
            self._port = port
            try:
                self._read(port)
            except (serial.SerialException, OSError) as e:
                log.warning("%s: lost the port (%s); reopening", self.source, e)
                failing_since = time.monotonic()
            finally:
                self.is_open = False
                with self._write:
                    self._port = None
                port.close()

    def reachable(self) -> bool:
        return self.is_open

    def send(self, message: bytes) -> bool:
        """Write one message down the line, framed; False if the port is not open or the
        write failed (the reader finds out about the port by itself)."""
        data = b"\x00" + encode(message)
        with self._write:
            if self._port is None:
                return False
            try:
                self._port.write(data)
            except (serial.SerialException, OSError) as e:
                log.warning("%s: could not write a command (%s)", self.source, e)
                return False
        self.sent += 1
        return True

    def _read(self, port: serial.Serial) -> None:
        deframer = Deframer()  # a fresh one per open: a partial frame from before is noise
        while not self._stop.is_set():
            self.progress = time.monotonic()
            data = port.read(max(1, port.in_waiting or 1))
            if not data:
                continue
            self.bytes += len(data)
            for item in deframer.feed(data):
                if isinstance(item, ProtocolError):
                    self.errors += 1
                    self.inbox.submit(item, self.source)  # counted by the verifier
                else:
                    self.frames += 1
                    self.inbox.submit(item, self.source, claimed=self.cfg.device or None)
