"""Serial link framing, receiving side, in firmware code: the tests' half of wire.py.

COBS decoding, the CRC-32 check and a bounded deframer that resyncs on the next 0x00.
A meter only sends, so this is not firmware: the tests run it under CPython and the
MicroPython unix port against the gateway's framing and the firmware's encoder
(tests/support/fwrunner.py puts tests/firmware/lib on the module path). It is never flashed.
"""

import struct

from gemeter.frame import MAX_MESSAGE
from gemeter.framing import FramingError, crc32

# COBS adds one byte per 254 body bytes plus one; the body is message + 4 CRC bytes.
# (Not a const(): MicroPython folds only constants defined in the same module.)
MAX_ENCODED = MAX_MESSAGE + 4 + (MAX_MESSAGE + 4) // 254 + 1


def cobs_decode(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise FramingError("COBS block runs past the end of the frame")
        out.extend(data[i + 1 : end])
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def decode(body):
    """Decode one frame body (the bytes between delimiters); returns the message."""
    if len(body) > MAX_ENCODED:
        raise FramingError("frame of %d bytes exceeds %d" % (len(body), MAX_ENCODED))
    raw = cobs_decode(body)
    if len(raw) < 5:
        raise FramingError("frame too short for a message and its CRC")
    msg = raw[:-4]
    if struct.unpack("<I", raw[-4:])[0] != crc32(msg):
        raise FramingError("CRC mismatch")
    return msg


class Deframer:
    """Splits a byte stream into frames; bounded buffer, resyncs on the next delimiter.

    feed(chunk) returns a list of (message or None, error or None) per completed frame.
    """

    def __init__(self):
        self._buf = bytearray()
        self._overflow = False
        self.errors = 0

    def feed(self, chunk):
        out = []
        for b in chunk:
            if b != 0:
                if len(self._buf) < MAX_ENCODED:
                    self._buf.append(b)
                else:
                    self._overflow = True
                continue
            if self._overflow:
                out.append((None, FramingError("frame exceeds %d bytes" % MAX_ENCODED)))
                self.errors += 1
            elif self._buf:
                try:
                    out.append((decode(self._buf), None))
                except FramingError as e:
                    self.errors += 1
                    out.append((None, e))
            self._buf = bytearray()
            self._overflow = False
        return out
