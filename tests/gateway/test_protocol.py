"""Gateway protocol module: precise rejection reasons, hostile input, round-trip properties."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cose, framing
from gateway.errors import ProtocolError, Reason
from gateway.payloads import reading_dict, reading_json
from gateway.protocol import (
    MAX_MESSAGE,
    ST_INVALID,
    Channel,
    Frame,
    FrameDecoder,
    Stat,
    build_frame,
    reading_map,
)
from tests.support.strategies import frames

KEY = bytes(range(32))
DEVICE = "line-7"
DECODER = FrameDecoder({DEVICE: KEY})


def frame(**over: Any) -> Frame:
    base: dict[str, Any] = {
        "device_id": DEVICE, "boot": 1, "seq": 5, "uptime_ms": 1000, "period_ms": 1000,
        "channels": (Channel(0, 0, {"voltage": Stat(230_000, 229_000, 231_000)}),),
    }
    base.update(over)
    return Frame(**base)


def signed(m: Any, device: str = DEVICE, key: bytes = KEY) -> bytes:
    return cose.Mac0.sign(key, device.encode(), cbor2.dumps(m))


def reason_of(data: bytes) -> Reason:
    with pytest.raises(ProtocolError) as info:
        DECODER.decode(data)
    return info.value.reason


def test_reasons_are_precise() -> None:
    good = build_frame(frame(), KEY)
    assert DECODER.decode(good) == frame()
    assert reason_of(good[:-3]) == Reason.TRUNCATED
    assert reason_of(bytes(MAX_MESSAGE + 1)) == Reason.TOO_LARGE
    assert reason_of(build_frame(frame(device_id="stranger"), KEY)) == Reason.UNKNOWN_DEVICE
    assert reason_of(build_frame(frame(), bytes(32))) == Reason.BAD_MAC
    assert reason_of(b"\x01\x02") == Reason.MALFORMED
    m = reading_map(frame())
    m[0] = 2
    assert reason_of(signed(m)) == Reason.BAD_VERSION
    m = reading_map(frame())
    m[8][0][2] = [230_000, 231_000, 232_000]  # mean below min
    assert reason_of(signed(m)) == Reason.OUT_OF_RANGE
    m = reading_map(frame())
    m[8][0][7] = 1001
    assert reason_of(signed(m)) == Reason.OUT_OF_RANGE
    m = reading_map(frame())
    m[5] = 1_000_000  # a unix time in 1970: clock not synchronised, must not be sent
    assert reason_of(signed(m)) == Reason.OUT_OF_RANGE
    m = reading_map(frame())
    m[1] = "other"  # payload names another device than the key id
    assert reason_of(signed(m)) == Reason.MALFORMED
    m = reading_map(frame())
    m[8][0][1] = ST_INVALID  # invalid channel must not carry a voltage
    assert reason_of(signed(m)) == Reason.MALFORMED
    m = reading_map(frame())
    m[8][0][7] = [900, 900, 900]  # power factor is not aggregated: a triple is malformed
    assert reason_of(signed(m)) == Reason.MALFORMED
    m = reading_map(frame())
    m[8][0][2] = [230_000, 229_000, True]  # not an integer inside a triple
    assert reason_of(signed(m)) == Reason.MALFORMED
    m = reading_map(frame())
    m[8][0][2] = [230_000, -1, 231_000]  # below the quantity's range
    assert reason_of(signed(m)) == Reason.OUT_OF_RANGE
    m = reading_map(frame())
    m[8][0][2] = 230_000  # an aggregated quantity may be sent as one instantaneous value
    assert DECODER.decode(signed(m)).channels[0].values["voltage"] == 230_000
    m = reading_map(frame())
    m[3] = True  # booleans are not integers here
    assert reason_of(signed(m)) == Reason.MALFORMED
    assert reason_of(signed(reading_map(frame()), device="bad/id")) == Reason.MALFORMED


def test_error_carries_device_after_authentication() -> None:
    m = reading_map(frame())
    m[8][0][8] = 200_000  # 200 Hz
    with pytest.raises(ProtocolError) as info:
        DECODER.decode(signed(m))
    assert info.value.device_id == DEVICE
    assert "frequency" in info.value.detail


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    m = reading_map(frame())
    m[40] = "future"
    m[8][0][30] = 1
    assert DECODER.decode(signed(m)) == frame()


@given(st.binary(max_size=MAX_MESSAGE + 8))
@settings(max_examples=500)
def test_garbage_only_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        DECODER.decode(data)


@given(st.data())
@settings(max_examples=300)
def test_mutated_frames_rejected(data: st.DataObject) -> None:
    good = bytearray(build_frame(frame(), KEY))
    pos = data.draw(st.integers(0, len(good) - 1))
    kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    if kind == "replace":
        new = data.draw(st.integers(0, 255).filter(lambda b: b != good[pos]))
        good[pos] = new
    elif kind == "insert":
        good.insert(pos, data.draw(st.integers(0, 255)))
    else:
        del good[pos]
    with pytest.raises(ProtocolError):
        DECODER.decode(bytes(good))


@given(frames())
@settings(max_examples=300)
def test_build_decode_roundtrip(f: Frame) -> None:
    data = build_frame(f, KEY)
    assert FrameDecoder({f.device_id: KEY}).decode(data) == f
    assert framing.decode(framing.encode(data)[:-1]) == data


@given(frames(), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=70)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=10), max_leaves=30))
@settings(max_examples=300)
def test_any_command_results_value_is_read_or_refused(f: Frame, results: Any) -> None:
    """Key 9 (command results) holding anything a MACed frame may carry: read into
    (id, state, reason) tuples, or the frame is malformed; nothing else happens."""
    m = reading_map(f)
    m[9] = results
    data = cose.Mac0.sign(KEY, f.device_id.encode(), cbor2.dumps(m, canonical=True))
    try:
        got = FrameDecoder({f.device_id: KEY}).decode(data).results
    except ProtocolError as e:
        assert e.reason == Reason.MALFORMED
        return
    assert all(isinstance(i, bytes) and 1 <= len(i) <= 16 and s in ("done", "failed", "refused")
               and isinstance(r, str) and len(r) <= 64 for i, s, r in got)


@given(frames(), st.none() | st.text(max_size=12), st.none() | st.text(max_size=12),
       st.none() | st.dictionaries(st.integers(0, 3), st.text(max_size=8), max_size=3))
@settings(max_examples=300)
def test_the_fast_json_writer_matches_json_dumps_byte_for_byte(
    f: Frame, site: str | None, feeder: str | None, names: dict[int, str] | None
) -> None:
    """The uplink's record body is written by hand for speed; it must be exactly what the
    json module makes of reading_dict (floats by repr, escapes, key order)."""
    assert reading_json(f, site, feeder, names) == json.dumps(
        reading_dict(f, site, feeder, names), separators=(",", ":"))


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=5), st.binary(max_size=200))
def test_deframer_resyncs_after_any_garbage(messages: list[bytes], garbage: bytes) -> None:
    stream = garbage + b"\x00" + b"".join(framing.encode(m) for m in messages)
    results = list(framing.Deframer().feed(stream))
    # Garbage yields errors only (a CRC-32 collision aside); every message comes through.
    assert [r for r in results if isinstance(r, bytes)] == messages
    assert all(isinstance(r, ProtocolError) for r in results[: len(results) - len(messages)])


def test_deframer_bounds_memory() -> None:
    d = framing.Deframer()
    out = list(d.feed(b"\x01" * 100_000))
    assert out == []
    assert len(d._buf) <= framing.MAX_ENCODED
    out = list(d.feed(b"\x00" + framing.encode(b"ok")))
    assert isinstance(out[0], ProtocolError) and out[0].reason == Reason.TOO_LARGE
    assert out[1:] == [b"ok"]
