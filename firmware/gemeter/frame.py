"""Build authenticated reading frames (protocol version 1, docs/protocol.md).

A frame is a COSE_Mac0 message (RFC 9052, CBOR tag 17) whose payload is the deterministic
CBOR encoding of a reading map with small integer keys. The MAC is HMAC 256/64 (COSE
algorithm 4: HMAC-SHA256 truncated to 8 bytes) over the MAC_structure of RFC 9052 section
6.3, ["MAC0", protected, external_aad = h'', payload], keyed with the device's 32-byte key.
The protected header carries the algorithm and the key id (the device id as UTF-8).

Every quantity is a scaled integer in the units listed below, because ESP32 and RP2040
floats are single precision. Pure logic: no I/O, runs under MicroPython and CPython.

A meter only builds frames; the firmware-side parser that the interop tests use
(tests/firmware/lib/frame_parser.py) is kept off the board, as is the CBOR decoder it needs.
"""

from micropython import const

from gemeter import auth, cbor

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


def _protected(device_id):
    return cbor.dumps({HDR_ALG: ALG_HMAC_256_64, HDR_KID: device_id.encode("utf-8")})


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
        protected = _protected(device_id)
        buf = bytearray()  # MAC_structure ["MAC0", protected, h'', payload], to the payload
        cbor.head(buf, 4, 4)
        for item in ("MAC0", protected, b""):
            cbor.encode(buf, item)
        self._mac_structure = bytes(buf)
        buf = bytearray()  # 17([protected, {}, payload, tag]), to the payload
        cbor.head(buf, 6, COSE_MAC0_TAG)
        cbor.head(buf, 4, 4)
        cbor.encode(buf, protected)
        cbor.encode(buf, {})
        self._message = bytes(buf)
        self._payload = bytearray()
        self._out = bytearray()
        self._len = bytearray()  # the payload's byte-string head

    def build(self, boot, seq, uptime_ms, period_ms, channels, unix_ms=None, dropped=0):
        """Encode and MAC one frame (bytes). channels: list of channel maps (C_* keys)."""
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise FrameError("a frame carries 1..%d channels" % MAX_CHANNELS)
        reading = {
            F_VERSION: VERSION,
            F_DEVICE: self.device_id,
            F_BOOT: boot,
            F_SEQ: seq,
            F_UPTIME: uptime_ms,
            F_PERIOD: period_ms,
            F_CHANNELS: channels,
        }
        if unix_ms is not None:
            reading[F_TIME] = unix_ms
        if dropped:
            reading[F_DROPPED] = dropped
        payload = self._payload
        payload[:] = b""  # emptied, not freed
        cbor.encode(payload, reading)
        head = self._len
        head[:] = b""
        cbor.head(head, 2, len(payload))
        tag = self._mac.digest(self._mac_structure, head, payload)
        out = self._out
        out[:] = self._message
        out.extend(head)
        out.extend(payload)
        cbor.head(out, 2, TAG_LEN)
        out.extend(memoryview(tag)[:TAG_LEN])
        if len(out) > MAX_MESSAGE:
            raise FrameError("frame of %d bytes exceeds %d" % (len(out), MAX_MESSAGE))
        return bytes(out)
