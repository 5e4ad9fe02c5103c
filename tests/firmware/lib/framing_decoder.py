"""Serial link framing, receiving side, for frames: a bounded deframer over gemeter.unframe.

A meter receives only commands (link_serial.py splits them, unframe.py decodes them); this
deframer takes the meter's own frames back apart in the tests, under CPython and the
MicroPython unix port, against the gateway's framing and the firmware's encoder
(tests/support/fwrunner.py puts tests/firmware/lib on the module path). It is never flashed.
"""

from gemeter import unframe
from gemeter.frame import MAX_MESSAGE
from gemeter.framing import FramingError

cobs_decode = unframe.cobs_decode

# COBS adds one byte per 254 body bytes plus one; the body is message + 4 CRC bytes.
# (Not a const(): MicroPython folds only constants defined in the same module.)
MAX_ENCODED = MAX_MESSAGE + 4 + (MAX_MESSAGE + 4) // 254 + 1


def decode(body):
    """Decode one frame body (the bytes between delimiters); returns the message."""
    if len(body) > MAX_ENCODED:
        raise FramingError("frame of %d bytes exceeds %d" % (len(body), MAX_ENCODED))
    return unframe.decode(body)


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
