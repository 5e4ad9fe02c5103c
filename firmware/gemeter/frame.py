"""Build authenticated reading frames (protocol version 1, docs/protocol.md).

A frame is a COSE_Mac0 message (RFC 9052, CBOR tag 17) whose payload is the deterministic
CBOR encoding (RFC 8949 section 4.2.1) of a reading map with small integer keys. The MAC is HMAC 256/64 (COSE
algorithm 4: HMAC-SHA256 truncated to 8 bytes) over the MAC_structure of RFC 9052 section
6.3, ["MAC0", protected, external_aad = h'', payload], keyed with the device's 32-byte key.
The protected header carries the algorithm and the key id (the device id as UTF-8).

Every quantity is a scaled integer in the units listed below, because ESP32 and RP2040
floats are single precision. Pure logic: no I/O, runs under MicroPython and CPython.

A frame uses a small part of CBOR: unsigned and negative integers, one text string (the
device id), byte strings, arrays of integers and maps whose keys are 0..23. The encoder here
writes only that, in the fixed layout of docs/protocol.md: a map's keys, all below 24, are
one byte each and sorted numerically, which is their deterministic (bytewise) order, and
every head is in its shortest form. A general CBOR codec is not needed on a board and costs
heap there; the one the tests use (tests/firmware/lib/cbor_encoder.py, cbor_decoder.py) is
never flashed, nor is the firmware-side parser (tests/firmware/lib/frame_parser.py).
"""


from micropython import const

from gemeter import auth

VERSION = const(1)
MAX_MESSAGE = const(1024)  # bytes of one encoded COSE_Mac0 message, enforced both ways
MAX_CHANNELS = const(8)
MAX_DEVICE_ID = const(32)
TAG_LEN = const(8)

COSE_MAC0_TAG = const(17)
HDR_ALG = const(1)
HDR_KID = const(4)
ALG_HMAC_256_64 = const(4)

# Reading map keys (frame level).
F_VERSION = const(0)
F_DEVICE = const(1)
F_BOOT = const(2)  # boot counter, persisted, +1 every boot
F_SEQ = const(3)  # per boot, strictly increasing from 0
F_UPTIME = const(4)  # ms since boot
F_TIME = const(5)  # unix time in ms, only when synchronised
F_PERIOD = const(6)  # length of the reporting period, ms
F_DROPPED = const(7)  # frames dropped from the RAM ring since boot
F_CHANNELS = const(8)

# Channel map keys. A measurement is an int, or [mean, min, max] over the period.
C_INDEX = const(0)
C_STATUS = const(1)
C_VOLTAGE = const(2)  # mV
C_CURRENT = const(3)  # mA
C_POWER = const(4)  # active power, mW, negative = export
C_REACTIVE = const(5)  # mvar
C_APPARENT = const(6)  # mVA
C_PF = const(7)  # power factor x 1000, -1000..1000
C_FREQ = const(8)  # mHz
C_ENERGY = const(9)  # active energy register, Wh
C_ENERGY_DELTA = const(10)  # active energy over the period, mWh
C_SAMPLES = const(11)  # good samples aggregated into this period
C_ERRORS = const(12)  # failed reads in this period

# Channel status bits.
ST_INVALID = const(0x01)  # no trustworthy reading: measurement keys are absent
ST_CRC = const(0x02)  # CRC errors on the bus in this period
ST_TIMEOUT = const(0x04)  # the IC did not answer in this period
ST_CHIP_RESET = const(0x08)  # IC reset detected and re-initialised
ST_UNCALIBRATED = const(0x10)  # scaling uses defaults, not a calibration
ST_IC_ALARM = const(0x20)  # the IC's own alarm output is active
ST_PARTIAL = const(0x40)  # some samples of the period failed


class FrameError(ValueError):
    """A message that is not a valid, authentic gridedge frame."""


_ID_PUNCT = "._-"


def valid_device_id(s):
    """1..32 characters of A-Z a-z 0-9 . _ - (safe in MQTT topics and file names)."""
    if not isinstance(s, str) or not 1 <= len(s) <= MAX_DEVICE_ID:
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


def _value(buf, v):
    # A measurement: an int, or a list of ints ([mean, min, max]).
    if isinstance(v, list):
        head(buf, 4, len(v))
        for x in v:
            _int(buf, x)
    else:
        _int(buf, v)


def _int(buf, v):
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError("a frame carries integers, not %s" % type(v).__name__)
    if v >= 0:
        head(buf, 0, v)
    else:
        head(buf, 1, -1 - v)


def _bytes(buf, b):
    head(buf, 2, len(b))
    buf.extend(b)


def _channel(buf, m):
    # A channel map (C_* keys, each 0..23: one byte, numeric order = deterministic order).
    keys = sorted(m)
    head(buf, 5, len(keys))
    for k in keys:
        if not 0 <= k < 24:
            raise FrameError("channel key %r" % (k,))
        buf.append(k)
        _value(buf, m[k])


class FrameBuilder:
    """Builds frames for one device: ``FrameBuilder(device_id, key).build(...)``.

    The key's HMAC pads, the protected header and everything before the payload in the
    MAC_structure and in the message are computed once. The payload and the message are
    encoded into two buffers that keep their size (the largest frame so far), and the MAC
    is taken over the MAC_structure's parts, so a frame allocates little beyond itself.
    """

    def __init__(self, device_id, key):
        if not valid_device_id(device_id):
            raise FrameError("device id must be 1..%d of A-Z a-z 0-9 . _ -" % MAX_DEVICE_ID)
        if len(key) != 32:
            raise FrameError("device key must be 32 bytes")
        self.device_id = device_id
        self._mac = auth.HMACSHA256(key)
        kid = device_id.encode("utf-8")
        self._kid = kid
        buf = bytearray(b"\xa2")  # protected header {1: alg, 4: kid}
        buf.append(HDR_ALG)
        buf.append(ALG_HMAC_256_64)
        buf.append(HDR_KID)
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

    def build(self, boot, seq, uptime_ms, period_ms, channels, unix_ms=None, dropped=0):
        """Encode and MAC one frame (bytes). channels: list of channel maps (C_* keys)."""
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise FrameError("a frame carries 1..%d channels" % MAX_CHANNELS)
        payload = self._payload
        payload[:] = b""  # emptied, not freed
        # The reading map, its keys in numeric order; F_TIME and F_DROPPED only when set.
        head(payload, 5, 7 + (unix_ms is not None) + (dropped != 0))
        payload.append(F_VERSION)
        payload.append(VERSION)
        payload.append(F_DEVICE)
        head(payload, 3, len(self._kid))  # the device id, a text string
        payload.extend(self._kid)
        for k, v in ((F_BOOT, boot), (F_SEQ, seq), (F_UPTIME, uptime_ms),
                     (F_TIME, unix_ms), (F_PERIOD, period_ms), (F_DROPPED, dropped)):
            if v is not None and (v or k != F_DROPPED):
                payload.append(k)
                _int(payload, v)
        payload.append(F_CHANNELS)
        head(payload, 4, len(channels))
        for m in channels:
            _channel(payload, m)
        length = self._len
        length[:] = b""
        head(length, 2, len(payload))
        tag = self._mac.digest(self._mac_structure, length, payload)
        out = self._out
        out[:] = self._message
        out.extend(length)
        out.extend(payload)
        head(out, 2, TAG_LEN)
        out.extend(memoryview(tag)[:TAG_LEN])
        if len(out) > MAX_MESSAGE:
            raise FrameError("frame of %d bytes exceeds %d" % (len(out), MAX_MESSAGE))
        return bytes(out)
