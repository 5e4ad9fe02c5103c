"""The paho adapter's read-ahead socket as a parser of the broker's byte stream.

Whatever the packet mix and however the stream is cut into reads, paho must see exactly
the packets the broker sent, except that a PUBLISH over the limit arrives with its topic
and packet id and an empty payload (its real length remembered under its packet id).
The real broker and the real daemon are in tests/gateway/test_hostile.py; here hypothesis
drives the stream, cut at random places, through a socket stand-in.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.paho_adapter import ReadAhead, _varint

LIMIT = 300


def packet(command: int, body: bytes) -> bytes:
    return bytes([command]) + _varint(len(body)) + body


def publish(topic: bytes, mid: int, payload: bytes, qos: int = 1) -> bytes:
    var = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return packet(0x30 | qos << 1, var + payload)


class Chunks:
    """A non-blocking socket that hands out the stream in the given chunk sizes."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.pos = data, sizes, 0

    def recv(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        size = min(n, self.sizes[self.pos % len(self.sizes)] if self.sizes else n)
        out = self.data[self.pos:self.pos + max(1, size)]
        self.pos += len(out)
        return out


def read_packets(sock: ReadAhead, count: int) -> list[bytes]:
    """paho's way: one byte of command, the length a byte at a time, then the body."""
    out = []
    for _ in range(count):
        head = sock.recv(1)
        length, mult, raw = 0, 1, b""
        while True:
            b = sock.recv(1)
            raw += b
            length += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        out.append(head + raw + body)
    return out


packets = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.binary(min_size=1, max_size=40),
              st.integers(1, 65535), st.integers(0, 2000), st.sampled_from([0, 1])),
    st.tuples(st.just("puback"), st.integers(1, 65535)),
    st.tuples(st.just("ping")),
), min_size=1, max_size=12)


@given(packets, st.lists(st.integers(1, 700), max_size=8))
@settings(max_examples=300)
def test_paho_sees_every_packet_and_no_oversized_payload(spec: list[tuple[object, ...]],
                                                        sizes: list[int]) -> None:
    stream, expected, cut = b"", [], {}
    for p in spec:
        if p[0] == "publish":
            _, topic, mid, size, qos = p
            payload = bytes([i % 251 for i in range(size)])
            stream += publish(topic, mid, payload, qos)
            big = len(topic) + 2 + 2 * qos + size > LIMIT
            expected.append(publish(topic, mid, b"" if big else payload, qos))
            if big:
                cut[mid if qos else 0] = len(topic) + 2 + 2 * qos + size
        elif p[0] == "puback":
            stream += packet(0x40, p[1].to_bytes(2, "big"))
            expected.append(packet(0x40, p[1].to_bytes(2, "big")))
        else:
            stream += packet(0xD0, b"")
            expected.append(packet(0xD0, b""))
    sock = ReadAhead(Chunks(stream, sizes), LIMIT)
    assert read_packets(sock, len(expected)) == expected
    for mid, length in cut.items():
        assert sock.oversized.get(mid) == length
