"""Serial link framing, sending side: COBS with a 0x00 delimiter and a CRC-32 trailer.

On the wire one frame is COBS(message || CRC-32(message) as 4 bytes little-endian) followed by
a single 0x00. COBS removes every zero byte from the body, so a receiver that loses sync
(noise, a cable plugged in mid-frame) drops bytes up to the next 0x00 and is back in step.
The CRC is the IEEE 802.3 CRC-32 of binascii/zlib. The message limit matches frame.py.
Pure logic, no I/O: runs under MicroPython and CPython (docs/protocol.md has the format).

The receiving half (COBS decoding and the CRC check) is unframe.py: a meter receives only
commands, so it is loaded with the command code, not kept with this module.
"""

import struct

from gemeter.frame import MAX_MESSAGE

try:
    from binascii import crc32 as _crc32_builtin

    def crc32(data):
        return _crc32_builtin(data) & 0xFFFFFFFF

except ImportError:  # a port built without it (MICROPY_PY_BINASCII_CRC32 is opt-in)
    from gemeter.crc32 import crc32_soft as crc32


class FramingError(ValueError):
    """A message over the size limit (and, in the tests' decoder, a bad received frame)."""


def _cobs_into(out, parts):
    """Append COBS of the parts, joined, to out."""
    code_pos = len(out)
    out.append(0)
    code = 1
    full = False  # the last block was closed by reaching 254 bytes, not by a zero
    for data in parts:
        for b in data:
            full = False
            if b == 0:
                out[code_pos] = code
                code_pos = len(out)
                out.append(0)
                code = 1
            else:
                out.append(b)
                code += 1
                if code == 0xFF:
                    out[code_pos] = code
                    code_pos = len(out)
                    out.append(0)
                    code = 1
                    full = True
    if full:
        # Data ends right after a full block: no further code byte (canonical COBS, as the
        # gateway's cobs library emits; decoders accept both forms).
        out[code_pos:] = b""
    else:
        out[code_pos] = code


def cobs_encode(data):
    out = bytearray()
    _cobs_into(out, (data,))
    return bytes(out)


def encode_into(out, message):
    """Frame a message for the serial link, delimiter included, into the bytearray out
    (emptied first: a buffer made once keeps its size)."""
    if len(message) > MAX_MESSAGE:
        raise FramingError("message of %d bytes exceeds %d" % (len(message), MAX_MESSAGE))
    out[:] = b""
    _cobs_into(out, (message, struct.pack("<I", crc32(message))))
    out.append(0)
    return out


def encode(message):
    """Frame a message for the serial link, delimiter included."""
    return bytes(encode_into(bytearray(), message))
