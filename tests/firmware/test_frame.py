"""The firmware's frame encoder (gemeter/frame.py) at the edges of CBOR's integer heads.

A meter writes only the fixed frame layout, with its own small encoder (no general CBOR
codec is flashed). Whatever integers a reading holds, the payload must be the deterministic
encoding cbor2 gives (canonical=True), head widths included; anything a frame cannot carry
is refused with FrameError before a byte is sent. The whole message's interop with the
gateway is in tests/system/test_protocol_interop.py.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fwrunner import firmware_module

frame = firmware_module("gemeter.frame")
KEY = bytes(range(32))
# Every head width: 0..23 in the initial byte, then 1, 2, 4 and 8 bytes, both signs.
EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
INTS = st.one_of(st.sampled_from(EDGES + [-1 - e for e in EDGES]),
                 st.integers(min_value=-(2**64), max_value=2**64 - 1))
VALUES = st.one_of(INTS, st.lists(INTS, min_size=3, max_size=3))
CHANNEL = st.dictionaries(st.integers(min_value=0, max_value=23), VALUES, min_size=1,
                          max_size=13)


def payload_of(message: bytes) -> bytes:
    tagged = cbor2.loads(message)
    assert tagged.tag == 17
    payload: bytes = tagged.value[2]
    return payload


@given(st.lists(CHANNEL, min_size=1, max_size=8), INTS.filter(lambda v: v >= 0),
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)),
       st.integers(min_value=0, max_value=2**32))
@settings(max_examples=300, deadline=None)
def test_payload_is_the_deterministic_encoding(
    channels: list[dict[int, Any]], seq: int, unix_ms: int | None, dropped: int
) -> None:
    built = frame.FrameBuilder("m-1", KEY).build(7, seq, 1234, 1000, channels,
                                                 unix_ms=unix_ms, dropped=dropped)
    reading: dict[int, Any] = {0: 1, 1: "m-1", 2: 7, 3: seq, 4: 1234, 6: 1000, 8: channels}
    if unix_ms is not None:
        reading[5] = unix_ms
    if dropped:
        reading[7] = dropped
    assert payload_of(built) == cbor2.dumps(reading, canonical=True)


@pytest.mark.parametrize("value", [1.5, True, "230", None, [1, 2.0, 3], 2**64, -(2**64) - 1])
def test_a_value_a_frame_cannot_carry_is_refused(value: Any) -> None:
    builder = frame.FrameBuilder("m-1", KEY)
    with pytest.raises(frame.FrameError):
        builder.build(1, 0, 0, 1000, [{0: 0, 2: value}])
    with pytest.raises(frame.FrameError):
        builder.build(1, 0, 0, 1000, [{24: 1}])  # a key that is not one byte
    assert payload_of(builder.build(1, 0, 0, 1000, [{0: 0}]))  # the builder is still usable
