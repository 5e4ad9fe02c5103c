"""Serial link framing on the gateway: COBS with 0x00 delimiters and a CRC-32 trailer.

The inverse of firmware/gemeter/framing.py, written independently on the ``cobs`` library and
``zlib.crc32``. ``Deframer.feed`` takes bytes as they arrive from a UART and yields one
result per delimiter: the message, or a ``ProtocolError`` (BAD_CRC, MALFORMED, TOO_LARGE).
The buffer is bounded: bytes past the largest legal frame are discarded until the next
delimiter, so a babbling or mis-wired port cannot grow memory, and the reader is back in
step at the next 0x00 after any garbage.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from cobs import cobs

from gateway.errors import ProtocolError, Reason
from gateway.protocol import MAX_MESSAGE

CRC_LEN = 4
# COBS adds one byte per 254 body bytes plus one; the body is message + CRC.
MAX_ENCODED = MAX_MESSAGE + CRC_LEN + (MAX_MESSAGE + CRC_LEN) // 254 + 1


def encode(message: bytes) -> bytes:
    """One serial frame for a message, trailing delimiter included."""
    if len(message) > MAX_MESSAGE:
        raise ProtocolError(Reason.TOO_LARGE, f"{len(message)} bytes > {MAX_MESSAGE}")
    body = message + struct.pack("<I", zlib.crc32(message))
    return bytes(cobs.encode(body)) + b"\x00"


def decode(frame: bytes) -> bytes:
    """Decode the bytes between two delimiters into the message; checks size and CRC."""
    if len(frame) > MAX_ENCODED:
        raise ProtocolError(Reason.TOO_LARGE, f"serial frame {len(frame)} bytes > {MAX_ENCODED}")
    try:
        body = bytes(cobs.decode(frame))
    except cobs.DecodeError as e:
        raise ProtocolError(Reason.MALFORMED, f"COBS: {e}") from e
    if len(body) <= CRC_LEN:
        raise ProtocolError(Reason.TRUNCATED, f"serial frame of {len(body)} bytes has no message")
    message, crc = body[:-CRC_LEN], struct.unpack("<I", body[-CRC_LEN:])[0]
    if zlib.crc32(message) != crc:
        raise ProtocolError(Reason.BAD_CRC, "CRC-32 mismatch")
    return message


class Deframer:
    """Incremental deframer for one serial port; see the module docstring."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._dropped = 0  # bytes discarded from the current oversized frame

    def feed(self, data: bytes) -> Iterator[bytes | ProtocolError]:
        start = 0
        while True:
            end = data.find(b"\x00", start)
            chunk = data[start:] if end < 0 else data[start:end]
            room = MAX_ENCODED - len(self._buf)
            if len(chunk) > room:
                self._buf += chunk[:room]
                self._dropped += len(chunk) - room
            else:
                self._buf += chunk
            if end < 0:
                return
            start = end + 1
            if self._dropped:
                size = len(self._buf) + self._dropped
                yield ProtocolError(Reason.TOO_LARGE, f"serial frame {size} bytes > {MAX_ENCODED}")
            elif self._buf:  # empty frames (back-to-back delimiters) are line idle, not errors
                try:
                    yield decode(bytes(self._buf))
                except ProtocolError as e:
                    yield e
            self._buf.clear()
            self._dropped = 0
