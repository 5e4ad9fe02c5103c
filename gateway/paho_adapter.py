"""The one place the gateway reaches into paho-mqtt's internals (paho-mqtt >=2.1,<2.3).

pyproject.toml pins paho to those versions for this module: a new minor version is checked
against the internals used here before the pin moves.

Ingest needs three things paho does not offer publicly, all for MQTT 3.1.1 reads:

- **Reads in bulk.** paho reads each packet's header a byte per ``recv`` (three or four
  system calls per frame, each giving up and re-taking the GIL the committer holds).
  ``ReadAhead`` wraps the socket and serves them from one 64 KiB buffer; paho asks
  ``pending()`` (as for TLS sockets) and skips its wait while bytes are buffered.
- **A size limit before memory.** paho reads a whole packet into one bytes object before
  anyone sees it (by repeated concatenation: a 100 MB PUBLISH took the gateway to 398 MiB).
  ``ReadAhead`` follows the packet boundaries in the stream; a PUBLISH whose remaining
  length exceeds ``max_publish`` reaches paho with its topic and packet id but an *empty*
  payload, while its real payload is discarded from the socket as it arrives. The
  packet id is remembered in ``oversized`` so ingest can count it ``too_large`` and
  acknowledge it: otherwise the broker would deliver it again after every reconnect.
- **Acknowledgements in bulk.** ``Client.send_pubacks`` queues a batch's PUBACKs as one
  buffer (paho otherwise writes and wakes the broker once per PUBACK).
- **Why a connection attempt failed.** paho's loop catches the ``OSError`` of a failed
  attempt and calls ``on_connect_fail`` without it; ``Client.connect_error`` keeps it.

Everything else uses paho's public API.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 section 3.4: type 4, remaining length 2, mid
PUBLISH = 3  # MQTT control packet type (section 2.2.1)
MAX_OVERSIZED = 1024  # packet ids remembered until their (empty) message is handled


def _varint(n: int) -> bytes:
    """MQTT's remaining-length encoding (section 2.2.3)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class ReadAhead:
    """The broker socket, read in bulk, with oversized PUBLISH payloads cut off unread."""

    def __init__(self, sock: Any, max_publish: int) -> None:
        self._sock = sock
        self.max_publish = max_publish
        self._buf = b""
        self._pos = 0
        self._left = 0  # bytes of the current packet not yet served (0: at a boundary)
        self._skip = 0  # bytes of a cut-off payload still to discard from the socket
        self.oversized: OrderedDict[int, int] = OrderedDict()  # packet id -> real length

    def _fill(self) -> bool:
        """Append what the socket has (after discarding skipped bytes). False at EOF;
        BlockingIOError (or ssl.SSLWantReadError) when there is nothing yet."""
        while True:
            data = self._sock.recv(65536)
            if not data:
                return False
            if self._skip:
                cut = min(self._skip, len(data))
                self._skip -= cut
                data = data[cut:]
                if not data:
                    continue
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
            return True

    def _fixed_header(self) -> tuple[int, int, int] | None:
        """(command byte, remaining length, header length) at the boundary, or None while
        incomplete. An invalid length is served to paho as it is: paho refuses it."""
        buf, pos = self._buf, self._pos
        mult, length = 1, 0
        for i in range(1, 5):
            if pos + i >= len(buf):
                return None
            byte = buf[pos + i]
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                return buf[pos], length, i + 1
        return buf[pos], 0, 5

    def _start_packet(self) -> bool:
        """Find the next packet's size, cutting off an oversized payload. False at EOF."""
        while (header := self._fixed_header()) is None:
            if not self._fill():
                return False
        command, remaining, hlen = header
        if command >> 4 != PUBLISH or remaining <= self.max_publish:
            self._left = hlen + remaining
            return True
        # Topic length, topic and (QoS 1 and 2) packet id: what paho needs to route and
        # acknowledge it. MQTT 3.1.1 only (section 3.3.2): v5 has properties after them.
        start = self._pos + hlen
        while len(self._buf) - start < 2:
            if not self._fill():
                return False
            start = self._pos + hlen
        qos = (command >> 1) & 3
        vlen = 2 + int.from_bytes(self._buf[start:start + 2], "big") + (2 if qos else 0)
        if vlen > remaining:  # malformed: let paho refuse it
            self._left = hlen + remaining
            return True
        while len(self._buf) - start < vlen:
            if not self._fill():
                return False
            start = self._pos + hlen
        var = self._buf[start:start + vlen]
        buffered = min(remaining - vlen, len(self._buf) - start - vlen)
        self._skip = remaining - vlen - buffered
        head = bytes([command]) + _varint(vlen)
        self._buf = head + var + self._buf[start + vlen + buffered:]
        self._pos = 0
        self._left = len(head) + vlen
        self.oversized[int.from_bytes(var[-2:], "big") if qos else 0] = remaining
        while len(self.oversized) > MAX_OVERSIZED:
            self.oversized.popitem(last=False)
        return True

    def recv(self, size: int) -> bytes:
        if self._left == 0 and not self._start_packet():
            return b""
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        n = min(size, self._left, len(self._buf) - self._pos)
        chunk = self._buf[self._pos:self._pos + n]
        self._pos += n
        self._left -= n
        return chunk

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0  # TLS
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking, …
        return getattr(self._sock, name)


class Client(mqtt.Client):
    """paho's client with bulk reads, a PUBLISH size limit and bulk PUBACKs (MQTT 3.1.1)."""

    def __init__(self, *args: Any, max_publish: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_publish = max_publish
        self.connect_error: OSError | None = None  # of the last attempt that failed

    def reconnect(self) -> MQTTErrorCode:
        """Each connection attempt (paho's loop calls it): keeps the error for
        ``on_connect_fail``, which paho calls without it."""
        self.connect_error = None
        try:
            return super().reconnect()
        except OSError as e:
            self.connect_error = e
            raise

    def _create_socket(self) -> Any:  # private in paho
        return ReadAhead(super()._create_socket(), self.max_publish)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Every packet already buffered, not one per wait: paho's loop otherwise makes
        a select() call per frame."""
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(self._sock, ReadAhead) \
                and self._sock.pending() > 0:
            rc = super().loop_read(max_packets)
        return rc

    def oversized(self, mid: int) -> int | None:
        """The real length of the PUBLISH ``mid`` if its payload was cut off (once)."""
        sock = self._sock
        return sock.oversized.pop(mid, None) if isinstance(sock, ReadAhead) else None

    def send_pubacks(self, mids: list[int]) -> None:
        """PUBACKs for ``mids`` as one write through paho's queue (so only paho's network
        thread touches the socket); one by one if paho lacks the private queue."""
        queue_packet = getattr(self, "_packet_queue", None)
        if queue_packet is None:
            for mid in mids:
                self.ack(mid, 1)
            return
        queue_packet(PacketTypes.PUBACK << 4,
                     b"".join(PUBACK.pack(0x40, 2, mid) for mid in mids), 0, 0)

    def network_thread_alive(self) -> bool:
        thread = getattr(self, "_thread", None)
        return thread is not None and thread.is_alive()
