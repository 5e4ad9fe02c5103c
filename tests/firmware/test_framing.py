"""Firmware serial framing details that the interop tests do not reach."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from tests.support.fwrunner import FirmwareRunner, firmware_module

framing = firmware_module("gemeter.framing")
framing_decoder = firmware_module("framing_decoder")  # tests/firmware/lib: the receiving half


def test_software_crc32_matches_zlib(fw: FirmwareRunner) -> None:
    """The fallback CRC (for ports without binascii.crc32) equals the IEEE CRC-32."""
    out = fw.run(
        "from gemeter import crc32, framing\n"
        "for data in (b'', b'123456789', bytes(range(256)) * 3):\n"
        "    print(crc32.crc32_soft(data), framing.crc32(data))\n"
    )
    expected = [(zlib.crc32(d), zlib.crc32(d)) for d in (b"", b"123456789", bytes(range(256)) * 3)]
    assert [tuple(map(int, line.split())) for line in out.split("\n") if line] == expected
    assert expected[1][0] == 0xCBF43926  # the catalogue check value of CRC-32/ISO-HDLC


@given(st.binary(max_size=600))
def test_cobs_roundtrip_and_no_zeros(data: bytes) -> None:
    enc = framing.cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert framing_decoder.cobs_decode(enc) == data


def test_oversized_frame_is_discarded_and_counted() -> None:
    d = framing_decoder.Deframer()
    out = d.feed(b"\x01" * (framing_decoder.MAX_ENCODED + 50) + b"\x00" + framing.encode(b"ok"))
    assert isinstance(out[0][1], framing.FramingError) and out[0][0] is None
    assert out[1] == (b"ok", None)
    assert d.errors == 1


@given(st.lists(st.sampled_from([0, 1, 0xFF]), max_size=800).map(bytes))
def test_cobs_same_bytes_as_cobs_library(data: bytes) -> None:
    """Firmware COBS equals the gateway's library at every length, 254-byte runs included."""
    from cobs import cobs

    assert framing.cobs_encode(data) == cobs.encode(data)
    assert framing_decoder.cobs_decode(cobs.encode(data)) == data


def test_cobs_block_boundaries(fw: FirmwareRunner) -> None:
    """Runs of 253..255 and 508/509 non-zero bytes, with and without a trailing zero."""
    from cobs import cobs

    cases = [b"\x01" * n + tail for n in (253, 254, 255, 508, 509) for tail in (b"", b"\x00")]
    out = fw.run(
        "import binascii, sys\n"
        "from gemeter import crc32, framing\n"
        "for n in (253, 254, 255, 508, 509):\n"
        "    for tail in (b'', b'\\x00'):\n"
        "        print(str(binascii.hexlify(framing.cobs_encode(b'\\x01' * n + tail)), 'ascii'))\n"
    )
    assert out.split() == [cobs.encode(c).hex() for c in cases]
