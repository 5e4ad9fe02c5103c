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
the line.
"""

from __future__ import annotations

import logging
import threading
import time

import serial

from gateway.config import SerialPort
from gateway.errors import ProtocolError
from gateway.framing import Deframer
from gateway.inbox import Inbox

log = logging.getLogger(__name__)
BACKOFF_MAX_S = 30.0


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
        self.progress = time.monotonic()
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
                port = serial.Serial(self.cfg.port, self.cfg.baud, timeout=0.2)
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
            try:
                self._read(port)
            except (serial.SerialException, OSError) as e:
                log.warning("%s: lost the port (%s); reopening", self.source, e)
                failing_since = time.monotonic()
            finally:
                self.is_open = False
                port.close()

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
