"""Protocol v1 on the gateway side: decode, authenticate and validate one reading frame.

The contract is docs/protocol.md. This is an implementation independent of the firmware's
(firmware/gemeter/), built on a strict decoder of the protocol's CBOR subset (strict_cbor)
and the standard library's hmac; the tests prove the two interoperate byte for byte.
``FrameDecoder.decode`` checks, in this order and trusting nothing from the wire before it
is checked: size, outer COSE_Mac0 structure, protected header, key id against the device
its source stands for (topic, serial port) and against the registry, the MAC (constant
time), then the reading map's version, types and ranges. Every failure is a
``ProtocolError`` with a ``Reason``; verify.py counts them. ``build_frame`` is the
inverse, for tools and tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gateway import cose, strict_cbor
from gateway.errors import ProtocolError, Reason

VERSION = 1
MAX_MESSAGE = 1024
MAX_CHANNELS = 8
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")

# Reading map keys (docs/protocol.md, "Reading frame").
F_VERSION, F_DEVICE, F_BOOT, F_SEQ, F_UPTIME, F_TIME, F_PERIOD, F_DROPPED, F_CHANNELS, \
    F_RESULTS, F_RELAYS = range(11)
RESULT_STATES = ("done", "failed", "refused")
MAX_RESULTS = 8
MAX_RELAYS = 8
RELAY_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
C_INDEX, C_STATUS = 0, 1

U32 = 2**32 - 1
U64 = 2**64 - 1
UNIX_MS_MIN = 1_577_836_800_000  # 2020-01-01: a device clock before this is not synchronised
UNIX_MS_MAX = 4_102_444_800_000  # 2100-01-01

# Channel status bits.
ST_INVALID = 0x01
ST_CRC = 0x02
ST_TIMEOUT = 0x04
ST_CHIP_RESET = 0x08
ST_UNCALIBRATED = 0x10
ST_IC_ALARM = 0x20
ST_PARTIAL = 0x40
STATUS_NAMES = {
    ST_INVALID: "invalid",
    ST_CRC: "crc_error",
    ST_TIMEOUT: "timeout",
    ST_CHIP_RESET: "chip_reset",
    ST_UNCALIBRATED: "uncalibrated",
    ST_IC_ALARM: "ic_alarm",
    ST_PARTIAL: "partial",
}


@dataclass(frozen=True, slots=True)
class Quantity:
    """One channel quantity: wire key, field name, unit, range, and whether it aggregates."""

    key: int
    name: str
    unit: str
    lo: int
    hi: int
    aggregated: bool = False


QUANTITIES = (
    Quantity(2, "voltage", "mV", 0, 1_000_000, aggregated=True),
    Quantity(3, "current", "mA", 0, 10_000_000, aggregated=True),
    Quantity(4, "power", "mW", -(10**10), 10**10, aggregated=True),
    Quantity(5, "reactive_power", "mvar", -(10**10), 10**10, aggregated=True),
    Quantity(6, "apparent_power", "mVA", 0, 10**10, aggregated=True),
    Quantity(7, "power_factor", "1/1000", -1000, 1000),
    Quantity(8, "frequency", "mHz", 0, 100_000),
    Quantity(9, "energy", "Wh", -(2**63), 2**63 - 1),  # net: import - export
    Quantity(10, "energy_delta", "mWh", -(2**53), 2**53),
    Quantity(11, "samples", "1", 0, U32),
    Quantity(12, "errors", "1", 0, U32),
)
QUANTITY_BY_NAME = {q.name: q for q in QUANTITIES}
QUANTITY_BY_KEY = {q.key: q for q in QUANTITIES}
COUNTERS = frozenset({"samples", "errors"})  # the only keys an invalid channel may carry


@dataclass(frozen=True, slots=True)
class Stat:
    """A measurement over the reporting period; an instantaneous one has mean = min = max."""

    mean: int
    min: int
    max: int


@dataclass(frozen=True, slots=True)
class Channel:
    index: int
    status: int
    # Quantity name -> value (Stat for aggregated quantities, int otherwise). Absent when the
    # device did not measure it or the channel is invalid: never a stale or default value.
    values: Mapping[str, Stat | int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.status & ST_INVALID

    @property
    def flags(self) -> list[str]:
        return [name for bit, name in STATUS_NAMES.items() if self.status & bit]


@dataclass(frozen=True, slots=True)
class Frame:
    device_id: str
    boot: int
    seq: int
    uptime_ms: int
    period_ms: int
    channels: tuple[Channel, ...]
    unix_ms: int | None = None
    dropped: int = 0
    # Commands the device handled since its last frame: (id, state, reason or "").
    results: tuple[tuple[bytes, str, str], ...] = ()
    # The board's relays as the frame was built: (name, closed), by name.
    relays: tuple[tuple[str, bool], ...] = ()

    @property
    def identity(self) -> tuple[str, int, int]:
        """(device, boot, seq): unique per reading, the de-duplication key end to end."""
        return (self.device_id, self.boot, self.seq)


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int:  # bool is an int subclass: reject it too
        kind = type(value).__name__
        raise ProtocolError(Reason.MALFORMED, f"{what} must be an integer, got {kind}")
    if not lo <= value <= hi:
        raise ProtocolError(Reason.OUT_OF_RANGE, f"{what}={value} outside {lo}..{hi}")
    return value


def _quantity(q: Quantity, raw: Any, where: str) -> Stat | int:
    what = f"{where}.{q.name}"
    if not q.aggregated or not isinstance(raw, list):
        return _int(raw, q.lo, q.hi, what)
    if len(raw) != 3:
        raise ProtocolError(Reason.MALFORMED, f"{what} must be [mean, min, max]")
    mean, lo, hi = (_int(v, q.lo, q.hi, what) for v in raw)
    if not lo <= mean <= hi:
        raise ProtocolError(Reason.OUT_OF_RANGE, f"{what}: not min <= mean <= max ({raw})")
    return Stat(mean, lo, hi)


def _channel(raw: Any, pos: int) -> Channel:
    if not isinstance(raw, dict):
        raise ProtocolError(Reason.MALFORMED, f"channel {pos} is not a map")
    index = _int(raw.get(C_INDEX), 0, MAX_CHANNELS - 1, f"channels[{pos}].index")
    status = _int(raw.get(C_STATUS), 0, 0xFFFF, f"channels[{pos}].status")
    values: dict[str, Stat | int] = {}
    for k, v in raw.items():
        q = QUANTITY_BY_KEY.get(k)
        if q is None:
            continue  # C_INDEX, C_STATUS, or a key from a newer firmware: ignored
        # Fast path for the well-formed case (the gateway's hottest loop); anything
        # unusual goes through _quantity, which says precisely what is wrong.
        if type(v) is int and not q.aggregated:
            if q.lo <= v <= q.hi:
                values[q.name] = v
                continue
        elif q.aggregated and type(v) is list and len(v) == 3:
            mean, lo, hi = v
            if type(mean) is int and type(lo) is int and type(hi) is int and \
                    q.lo <= lo <= mean <= hi <= q.hi:
                values[q.name] = Stat(mean, lo, hi)
                continue
        values[q.name] = _quantity(q, v, f"channels[{pos}]")
    if status & ST_INVALID and any(n not in COUNTERS for n in values):
        raise ProtocolError(Reason.MALFORMED, f"channel {index} is invalid but carries readings")
    return Channel(index, status, values)


def _results(raw: Any) -> tuple[tuple[bytes, str, str], ...]:
    """Command results: [[id (1..16 bytes), "done"|"failed"|"refused", reason?], ...]."""
    if not isinstance(raw, list) or len(raw) > MAX_RESULTS:
        raise ProtocolError(Reason.MALFORMED, f"results must be an array of 0..{MAX_RESULTS}")
    out = []
    for r in raw:
        if not (isinstance(r, list) and len(r) in (2, 3) and isinstance(r[0], bytes)
                and 1 <= len(r[0]) <= 16 and r[1] in RESULT_STATES
                and (len(r) == 2 or (isinstance(r[2], str) and len(r[2]) <= 64))):
            raise ProtocolError(Reason.MALFORMED, "a command result must be [id, state, "
                                "reason?]")
        out.append((r[0], r[1], r[2] if len(r) == 3 else ""))
    return tuple(out)


def _relays(raw: Any) -> tuple[tuple[str, bool], ...]:
    """Relay states: {name: 1 (closed) | 0 (open)}, 1..MAX_RELAYS of them."""
    if not (isinstance(raw, dict) and 1 <= len(raw) <= MAX_RELAYS and all(
            isinstance(n, str) and RELAY_NAME_RE.fullmatch(n) and type(v) is int
            and v in (0, 1) for n, v in raw.items())):
        raise ProtocolError(Reason.MALFORMED, f"relays must map 1..{MAX_RELAYS} names to "
                            "0 or 1")
    return tuple(sorted((n, v == 1) for n, v in raw.items()))


def parse_reading(reading: Any, device_id: str) -> Frame:
    """Validate an authenticated reading map and turn it into a Frame."""
    if not isinstance(reading, dict):
        raise ProtocolError(Reason.MALFORMED, "payload is not a map", device_id)
    try:
        version = reading.get(F_VERSION)
        if version != VERSION:
            raise ProtocolError(Reason.BAD_VERSION, f"version {version!r}, expected {VERSION}")
        if reading.get(F_DEVICE) != device_id:
            raise ProtocolError(Reason.MALFORMED, "device id in payload differs from key id")
        raw_channels = reading.get(F_CHANNELS)
        if not isinstance(raw_channels, list) or not 1 <= len(raw_channels) <= MAX_CHANNELS:
            raise ProtocolError(Reason.MALFORMED, f"channels must be an array of 1..{MAX_CHANNELS}")
        channels = tuple(_channel(c, i) for i, c in enumerate(raw_channels))
        if len({c.index for c in channels}) != len(channels):
            raise ProtocolError(Reason.MALFORMED, "duplicate channel index")
        unix_ms = reading.get(F_TIME)
        return Frame(
            device_id=device_id,
            boot=_int(reading.get(F_BOOT), 0, U32, "boot"),
            seq=_int(reading.get(F_SEQ), 0, U32, "seq"),
            uptime_ms=_int(reading.get(F_UPTIME), 0, U64, "uptime_ms"),
            period_ms=_int(reading.get(F_PERIOD), 0, U32, "period_ms"),
            channels=channels,
            unix_ms=None if unix_ms is None else _int(unix_ms, UNIX_MS_MIN, UNIX_MS_MAX, "unix_ms"),
            dropped=_int(reading.get(F_DROPPED, 0), 0, U32, "dropped"),
            results=_results(reading.get(F_RESULTS, [])),
            relays=_relays(reading[F_RELAYS]) if F_RELAYS in reading else (),
        )
    except ProtocolError as e:
        e.device_id = device_id
        raise


class FrameDecoder:
    """Authenticates and decodes frames against a registry of device keys. ``more``: other
    keys that verify a device's frame when its own does not (a key rotation's next and
    previous keys, keyring.py); ``used`` is then the one that did (None: its own)."""

    def __init__(self, keys: Mapping[str, bytes],
                 more: Callable[[str], Sequence[bytes]] | None = None) -> None:
        self.keys = keys
        self.more = more
        self.used: bytes | None = None

    def decode(self, data: bytes, claimed: str | None = None) -> Frame:
        """The frame; ``claimed``: the device its source stands for (the MQTT topic's
        device level, a serial port's configured device), which the key id must equal."""
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(Reason.TOO_LARGE, f"{len(data)} bytes > {MAX_MESSAGE}")
        msg = cose.Mac0.decode(data)
        device_id = msg.kid_text()
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise ProtocolError(Reason.MALFORMED, f"key id {device_id!r} is not a valid device id")
        if claimed is not None and claimed != device_id:
            # Checked before the MAC (cheap) and never trusted after it: a device's valid
            # frame republished under another device's topic is still rejected.
            raise ProtocolError(Reason.WRONG_SOURCE, f"frame of {device_id!r} came by the "
                                f"source of {claimed[:40]!r}", claimed)
        key = self.keys.get(device_id)
        if key is None:
            raise ProtocolError(Reason.UNKNOWN_DEVICE, f"no key for {device_id!r}", device_id)
        self.used = None
        if not msg.verify(key):
            self.used = next((k for k in (self.more(device_id) if self.more else ())
                              if msg.verify(k)), None)
            if self.used is None:
                raise ProtocolError(Reason.BAD_MAC, "MAC does not verify", device_id)
        try:
            reading = strict_cbor.loads(msg.payload)
        except ProtocolError as e:
            e.device_id = device_id
            raise
        return parse_reading(reading, device_id)


def reading_map(frame: Frame) -> dict[int, Any]:
    """The wire map of a Frame (inverse of parse_reading)."""

    def value(v: Stat | int) -> int | list[int]:
        return [v.mean, v.min, v.max] if isinstance(v, Stat) else v

    channels = []
    for ch in frame.channels:
        m: dict[int, Any] = {C_INDEX: ch.index, C_STATUS: ch.status}
        for name, v in ch.values.items():
            m[QUANTITY_BY_NAME[name].key] = value(v)
        channels.append(m)
    out: dict[int, Any] = {
        F_VERSION: VERSION,
        F_DEVICE: frame.device_id,
        F_BOOT: frame.boot,
        F_SEQ: frame.seq,
        F_UPTIME: frame.uptime_ms,
        F_PERIOD: frame.period_ms,
        F_CHANNELS: channels,
    }
    if frame.unix_ms is not None:
        out[F_TIME] = frame.unix_ms
    if frame.dropped:
        out[F_DROPPED] = frame.dropped
    if frame.results:
        out[F_RESULTS] = [[i, s, r] if r else [i, s] for i, s, r in frame.results]
    if frame.relays:
        out[F_RELAYS] = {n: int(on) for n, on in frame.relays}
    return out


def build_frame(frame: Frame, key: bytes) -> bytes:
    """Encode (deterministically) and MAC a frame, as the firmware does."""
    payload = cbor2.dumps(reading_map(frame), canonical=True)
    return cose.Mac0.sign(key, frame.device_id.encode(), payload)
