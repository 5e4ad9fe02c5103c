"""The firmware's frame encoder (gemeter/frame.py, aggregate.py) at the edges of CBOR.

A meter writes only the fixed frame layout, with its own small encoder (no general CBOR
codec is flashed): the frame builder writes the reading map, and each channel aggregate
writes its own map straight into the payload. Whatever the numbers, the payload must be
the deterministic encoding (cbor2's canonical=True gives the same bytes), head widths
included; anything a frame cannot carry is refused with FrameError before a byte is sent.
The whole message's interop with the gateway is in tests/system/test_protocol_interop.py.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as wire
from tests.support.fwrunner import firmware_module

frame = firmware_module("gemeter.frame")
aggregate = firmware_module("gemeter.aggregate")
KEY = bytes(range(32))
# Every head width: 0..23 in the initial byte, then 1, 2, 4 and 8 bytes.
EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63]
UINTS = st.one_of(st.sampled_from(EDGES), st.integers(min_value=0, max_value=2**64 - 1))
SIGNED = st.one_of(st.sampled_from(EDGES[:-1] + [-1 - e for e in EDGES[:-1]]),
                   st.integers(min_value=-(2**40), max_value=2**40))
OPTIONAL = st.one_of(st.none(), SIGNED)


class Reading:
    """A driver's reading (gemeter/drivers/__init__.py): scaled integers or None."""

    def __init__(self, values: list[int | None]) -> None:
        (self.voltage_mv, self.current_ma, self.power_mw, self.reactive_mvar,
         self.apparent_mva, self.pf_milli, self.frequency_mhz) = values


SAMPLE = st.tuples(st.lists(OPTIONAL, min_size=7, max_size=7), OPTIONAL, SIGNED, st.booleans())
PERIOD = st.lists(st.one_of(SAMPLE, st.sampled_from(["crc", "timeout"])), max_size=6)


def payload_of(message: bytes) -> bytes:
    tagged = cbor2.loads(message)
    assert tagged.tag == 17
    payload: bytes = tagged.value[2]
    return payload


def channels(periods: list[list[Any]]) -> list[Any]:
    aggs = []
    for i, period in enumerate(periods):
        agg = aggregate.ChannelAggregate(i)
        for s in period:
            if isinstance(s, str):
                agg.fail(s)
            else:
                values, energy, delta, alarm = s
                agg.add(Reading(values), energy_wh=energy, delta_mwh=delta, alarm=alarm)
        aggs.append(agg)
    return aggs


@given(st.lists(PERIOD, min_size=1, max_size=8), UINTS, UINTS,
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)), UINTS)
@settings(max_examples=300, deadline=None)
def test_payload_is_the_deterministic_encoding(
    periods: list[list[Any]], boot: int, seq: int, unix_ms: int | None, dropped: int
) -> None:
    built = frame.FrameBuilder("m-1", KEY).build(boot, seq, 1234, 1000, channels(periods),
                                                 unix_ms=unix_ms, dropped=dropped)
    payload = payload_of(built)
    reading = cbor2.loads(payload)
    assert cbor2.dumps(reading, canonical=True) == payload  # shortest heads, sorted keys
    header = {0: 1, 1: "m-1", 2: boot, 3: seq, 4: 1234, 6: 1000}
    if unix_ms is not None:
        header[5] = unix_ms
    if dropped:
        header[7] = dropped
    assert {k: v for k, v in reading.items() if k != 8} == header
    samples = wire.QUANTITY_BY_NAME["samples"].key
    assert [c[samples] for c in reading[8]] == [
        sum(not isinstance(s, str) for s in p) for p in periods]


@pytest.mark.parametrize("value", [1.5, True, "230", 2**64, -(2**64) - 1])
def test_a_value_a_frame_cannot_carry_is_refused(value: Any) -> None:
    builder = frame.FrameBuilder("m-1", KEY)
    if not isinstance(value, str):  # a driver's value that is no integer, or out of range
        with pytest.raises(frame.FrameError):
            builder.build(1, 0, 0, 1000, channels([[([value] + [None] * 6, None, 0, False)]]))
    with pytest.raises(frame.FrameError):
        builder.build(value, 0, 0, 1000, channels([[]]))
    assert payload_of(builder.build(1, 0, 0, 1000, channels([[]])))  # still usable
