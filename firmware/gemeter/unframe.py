"""Serial link framing, receiving side: the line split into frame bodies, and one body decoded.

The meter receives commands on its serial link (docs/protocol.md sections 5 and 8) in the
same framing it sends: COBS(message || CRC-32 little-endian), delimited by 0x00.
``take(link)`` reads what has arrived on a SerialLink's UART (at most 512 bytes a call, in
reads of 64: a babbling line cannot starve sampling, nor one read need a large block of
heap; 512 takes a whole firmware chunk's command, about 400 bytes, in one call) and splits it at the delimiters into the
link's ``inbox``: the bodies, still encoded. A body is at most ``_BODY_MAX`` bytes (a
512-byte command, its CRC and COBS's overhead); a longer one is skipped to the next
delimiter, and at most ``MAX_INBOX`` wait; the rest is counted in the link's
``dropped_commands``. ``decode(body)`` (cmdrun.py, as it runs them) checks the CRC and
returns the message. This module is loaded only when bytes come down, and unloaded with
the command code. The tests' deframer (tests/firmware/lib) uses ``decode`` too.
Pure logic over the port's any()/read(): runs under MicroPython and CPython.
"""

import struct

from micropython import const

from gemeter.framing import FramingError, crc32

MAX_INBOX = 4
_BODY_MAX = const(520)  # COBS of 512 + 4 bytes: + 1 per 254, + 1
_READ_MAX = const(64)  # per read: a small allocation in a full heap
_READS = const(8)  # reads per call: 512 bytes, a whole command, and sampling goes on


def take(link):
    """Split what has arrived on the link's port into its inbox (see the docstring)."""
    rx = link.rx  # [the body being received, skipping it]
    for _ in range(_READS):
        n = min(link.port.any(), _READ_MAX)
        data = link.port.read(n) if n else None
        if not data:
            return
        if rx[0] is None:
            rx[0] = bytearray()
        body = rx[0]
        for b in data:
            if b:
                if len(body) < _BODY_MAX:
                    body.append(b)
                else:
                    rx[1] = True
                continue
            if rx[1] or (body and len(link.inbox) >= MAX_INBOX):
                link.dropped_commands += 1
            elif body:
                link.inbox.append(bytes(body))
            body[:] = b""  # two delimiters in a row (the gateway's resync) are no frame
            rx[1] = False


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
    """The message in one frame body (the bytes between two delimiters), or FramingError."""
    raw = cobs_decode(body)
    if len(raw) < 5:
        raise FramingError("frame too short for a message and its CRC")
    msg = raw[:-4]
    if struct.unpack("<I", raw[-4:])[0] != crc32(msg):
        raise FramingError("CRC mismatch")
    return msg
