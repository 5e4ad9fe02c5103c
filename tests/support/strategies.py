"""Hypothesis strategies for protocol v1 frames, shared by the protocol tests."""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.protocol import QUANTITIES, ST_INVALID, Channel, Frame, Stat


def _stat(q_lo: int, q_hi: int) -> st.SearchStrategy[Stat]:
    return st.lists(st.integers(q_lo, q_hi), min_size=3, max_size=3).map(
        lambda v: Stat(sorted(v)[1], min(v), max(v))
    )


@st.composite
def channels(draw: st.DrawFn, index: int) -> Channel:
    status = draw(st.integers(0, 0xFFFF))
    values: dict[str, Stat | int] = {}
    for q in QUANTITIES:
        if status & ST_INVALID and q.name not in ("samples", "errors"):
            continue
        if draw(st.booleans()):
            if q.aggregated and draw(st.booleans()):
                values[q.name] = draw(_stat(q.lo, q.hi))
            else:
                values[q.name] = draw(st.integers(q.lo, q.hi))
    return Channel(index, status, values)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    n = draw(st.integers(1, 4))
    return Frame(
        device_id=draw(st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)),
        boot=draw(st.integers(0, 2**32 - 1)),
        seq=draw(st.integers(0, 2**32 - 1)),
        uptime_ms=draw(st.integers(0, 2**64 - 1)),
        period_ms=draw(st.integers(0, 2**32 - 1)),
        unix_ms=draw(st.none() | st.integers(1_577_836_800_000, 4_102_444_800_000)),
        dropped=draw(st.integers(0, 2**32 - 1)),
        channels=tuple(draw(channels(i)) for i in range(n)),
        results=tuple(draw(st.lists(st.tuples(
            st.binary(min_size=1, max_size=16), st.sampled_from(["done", "failed", "refused"]),
            st.text(max_size=64)), max_size=8))),
        relays=tuple(sorted(draw(st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True), st.booleans(),
            max_size=8)).items())),
    )
