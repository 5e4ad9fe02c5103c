"""Build authenticated reading frames (protocol version 1, docs/protocol.md).

A frame is a COSE_Mac0 message (RFC 9052, CBOR tag 17) whose payload is the deterministic
CBOR encoding (RFC 8949 section 4.2.1) of a reading map with small integer keys. The MAC is
HMAC 256/64 (COSE algorithm 4: HMAC-SHA256 truncated to 8 bytes) over the MAC_structure of
RFC 9052 section 6.3, ["MAC0", protected, external_aad = h'', payload], keyed with the
device's 32-byte key. The protected header carries the algorithm and the key id (the
device id as UTF-8). Each channel writes its own map (aggregate.py, where its keys and
units are); every quantity is a scaled integer, because ESP32 and RP2040 floats are single
precision. Pure logic: no I/O, runs under MicroPython and CPython.

A frame uses a small part of CBOR: unsigned and negative integers, one text string (the
device id), byte strings, arrays of integers and maps whose keys are 0..23. The encoder here
writes only that, in the fixed layout of docs/protocol.md: a map's keys, all below 24, are
one byte each and written in numeric order, which is their deterministic (bytewise) order,
and every head is in its shortest form. A general CBOR codec is not needed on a board and
costs heap there; the one the tests use (tests/firmware/lib/cbor_encoder.py, cbor_decoder.py)
is never flashed, nor is the firmware-side parser (tests/firmware/lib/frame_parser.py).
"""

from micropython import const

from gemeter import auth

# Names other modules use are public (each costs a name and a dict entry in RAM); the rest
# are private const()s, folded into the code where they are used.
MAX_MESSAGE = const(1024)  # bytes of one encoded COSE_Mac0 message, enforced both ways
MAX_CHANNELS = const(8)
_VERSION = const(1)
_MAX_DEVICE_ID = const(32)
_TAG_LEN = const(8)

_COSE_MAC0_TAG = const(17)
_HDR_ALG = const(1)
_HDR_KID = const(4)
_ALG_HMAC_256_64 = const(4)

# Reading map keys (the channel map's are in aggregate.py, which writes it).
_F_VERSION = const(0)
_F_DEVICE = const(1)
_F_BOOT = const(2)  # boot counter, persisted, +1 every boot
_F_SEQ = const(3)  # per boot, strictly increasing from 0
_F_UPTIME = const(4)  # ms since boot
_F_TIME = const(5)  # unix time in ms, only when synchronised
_F_PERIOD = const(6)  # length of the reporting period, ms
_F_DROPPED = const(7)  # frames dropped from the RAM ring since boot
_F_CHANNELS = const(8)
_F_RESULTS = const(9)  # results of commands (command.py): [[id, state, reason?], ...]


class FrameError(ValueError):
    """A message that is not a valid, authentic gridedge frame."""


_ID_PUNCT = "._-"


def valid_device_id(s):
    """1..32 characters of A-Z a-z 0-9 . _ - (safe in MQTT topics and file names)."""
    if not isinstance(s, str) or not 1 <= len(s) <= _MAX_DEVICE_ID:
        return False
    for c in s:
        if not (c.isalpha() or c.isdigit() or c in _ID_PUNCT) or ord(c) > 127:
            return False
    return True


def head(buf, major, n):
    """Append the head of a data item of major type ``major`` and argument n (shortest
    form; FrameError above 2**64 - 1). The tests' general encoder uses it too. The
    argument's bytes are appended one by one: struct.pack would allocate an object for
    each of the ~80 numbers of a 4-channel frame."""
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
        return
    if n < 0x100:
        buf.append(mt | 24)
        size = 1
    elif n < 0x10000:
        buf.append(mt | 25)
        size = 2
    elif n < 0x100000000:
        buf.append(mt | 26)
        size = 4
    elif n < 0x10000000000000000:
        buf.append(mt | 27)
        size = 8
    else:
        raise FrameError("integer out of range")
    shift = 8 * size
    while shift:
        shift -= 8
        buf.append((n >> shift) & 0xFF)


def put_int(buf, v):
    """Append integer v (FrameError for anything else, a bool included)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError("a frame carries integers, not %s" % type(v).__name__)
    if v >= 0:
        head(buf, 0, v)
    else:
        head(buf, 1, -1 - v)


def _bytes(buf, b):
    head(buf, 2, len(b))
    buf.extend(b)


class FrameBuilder:
    """Builds frames for one device: ``FrameBuilder(device_id, key).build(...)``.

    The key's HMAC pads, the protected header and everything before the payload in the
    MAC_structure and in the message are computed once. The payload and the message are
    encoded into two buffers that keep their size (the largest frame so far), and the MAC
    is taken over the MAC_structure's parts, so a frame allocates little beyond itself.
    """

    def __init__(self, device_id, key):
        if not valid_device_id(device_id):
            raise FrameError("device id must be 1..%d of A-Z a-z 0-9 . _ -" % _MAX_DEVICE_ID)
        if len(key) != 32:
            raise FrameError("device key must be 32 bytes")
        self.device_id = device_id
        self._mac = auth.HMACSHA256(key)
        kid = device_id.encode("utf-8")
        self._kid = kid
        buf = bytearray(b"\xa2")  # protected header {1: alg, 4: kid}
        buf.append(_HDR_ALG)
        buf.append(_ALG_HMAC_256_64)
        buf.append(_HDR_KID)
        _bytes(buf, kid)
        protected = bytes(buf)
        buf = bytearray(b"\x84\x64MAC0")  # MAC_structure ["MAC0", protected, h'', payload]
        _bytes(buf, protected)
        buf.append(0x40)  # external_aad: empty byte string
        self._mac_structure = bytes(buf)  # up to the payload
        buf = bytearray(b"\xd1\x84")  # 17([protected, {}, payload, tag])
        _bytes(buf, protected)
        buf.append(0xA0)  # unprotected header: empty map
        self._message = bytes(buf)  # up to the payload
        self._payload = bytearray()
        self._out = bytearray()
        self._len = bytearray()  # the payload's byte-string head

    def build(self, boot, seq, uptime_ms, period_ms, channels, unix_ms=None, dropped=0,
              results=None, relays=None):
        """Encode and MAC one frame (bytes). channels: 1..MAX_CHANNELS objects that each
        append their channel map with ``cbor_into(buf)`` (aggregate.ChannelAggregate);
        results: the CBOR array of the results of commands handled since the last frame
        (cmdrun.py encodes it: this code stays off the meter's heap between commands);
        relays: the relay states' map entry, key 10 included (relay.py encodes it when
        they change)."""
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise FrameError("a frame carries 1..%d channels" % MAX_CHANNELS)
        payload = self._payload
        payload[:] = b""  # emptied, not freed
        # The reading map, its keys in numeric order; _F_TIME and _F_DROPPED only when set.
        head(payload, 5, 7 + (unix_ms is not None) + (dropped != 0) + bool(results)
             + bool(relays))
        payload.append(_F_VERSION)
        payload.append(_VERSION)
        payload.append(_F_DEVICE)
        head(payload, 3, len(self._kid))  # the device id, a text string
        payload.extend(self._kid)
        for k, v in ((_F_BOOT, boot), (_F_SEQ, seq), (_F_UPTIME, uptime_ms),
                     (_F_TIME, unix_ms), (_F_PERIOD, period_ms), (_F_DROPPED, dropped)):
            if v is not None and (v or k != _F_DROPPED):
                payload.append(k)
                put_int(payload, v)
        payload.append(_F_CHANNELS)
        head(payload, 4, len(channels))
        for c in channels:
            c.cbor_into(payload)
        if results:
            payload.append(_F_RESULTS)
            payload.extend(results)
        if relays:
            payload.extend(relays)
        length = self._len
        length[:] = b""
        head(length, 2, len(payload))
        tag = self._mac.digest(self._mac_structure, length, payload)
        out = self._out
        out[:] = self._message
        out.extend(length)
        out.extend(payload)
        head(out, 2, _TAG_LEN)
        out.extend(memoryview(tag)[:_TAG_LEN])
        if len(out) > MAX_MESSAGE:
            raise FrameError("frame of %d bytes exceeds %d" % (len(out), MAX_MESSAGE))
        return bytes(out)
