"""Channel maps for the firmware tests, as a meter writes them (never flashed).

A meter's ChannelAggregate writes its map straight into a frame (``cbor_into``); the tests
read it back with the tests' decoder, so what they check is the bytes that go on the wire.
``Encoded`` is the other way round: a plain map (a test's channel) that a FrameBuilder
takes as it takes an aggregate, encoded by the tests' general encoder.
"""

import cbor_decoder
import cbor_encoder


def channel_map(agg):
    """The map agg writes for its period (which ends it, as a report does)."""
    buf = bytearray()
    agg.cbor_into(buf)
    return cbor_decoder.loads(bytes(buf))


class Encoded:
    """A channel map given as a dict (C_* keys), for FrameBuilder.build."""

    def __init__(self, value):
        self.value = value

    def cbor_into(self, buf):
        cbor_encoder.encode(buf, self.value)
