"""Firmware and gateway speak the same protocol: frames, MACs and serial framing.

Frames built by the firmware (under CPython and the real MicroPython) decode and verify in
the gateway; frames built by the gateway's independent cbor2 implementation parse in the
firmware; both produce identical bytes. Two checks that no one here wrote: every frame
validates against the CDDL in docs/protocol.md with zcbor, and its MAC verifies with pycose.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from pycose.keys.symmetric import SymmetricKey
from pycose.messages import Mac0Message

from gateway import framing
from gateway.errors import ProtocolError, Reason
from gateway.protocol import (
    ST_CRC,
    ST_INVALID,
    ST_PARTIAL,
    ST_TIMEOUT,
    Channel,
    Frame,
    FrameDecoder,
    Stat,
    build_frame,
    reading_map,
)
from tests.support.fwrunner import REPO, FirmwareRunner, firmware_module
from tests.support.strategies import frames

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DEVICE = "mtr-0001"

SAMPLES = [
    Frame(
        DEVICE, boot=3, seq=0, uptime_ms=10_012, period_ms=10_000,
        channels=(Channel(0, 0, {
            "voltage": Stat(230_100, 229_050, 231_400),
            "current": Stat(5_012, 4_100, 6_300),
            "power": Stat(1_152_000, 940_000, 1_450_000),
            "power_factor": 990, "frequency": 50_010, "energy": 123_456,
            "energy_delta": 3_200, "samples": 10, "errors": 0,
        }),),
    ),
    Frame(
        DEVICE, boot=3, seq=1, uptime_ms=20_012, period_ms=10_000,
        unix_ms=1_700_000_000_000, dropped=2,
        channels=(
            Channel(0, ST_PARTIAL | ST_CRC, {
                "voltage": Stat(229_000, 228_000, 230_000), "current": Stat(0, 0, 0),
                "power": Stat(-3_500_000, -4_000_000, -3_000_000),
                "reactive_power": Stat(-120_000, -150_000, 100_000),
                "apparent_power": Stat(3_600_000, 3_000_000, 4_100_000),
                "power_factor": -970, "frequency": 49_950, "samples": 8, "errors": 2,
            }),
            Channel(1, ST_INVALID | ST_TIMEOUT, {"samples": 0, "errors": 10}),
        ),
    ),
    Frame(  # extremes of every range
        DEVICE, boot=2**32 - 1, seq=2**32 - 1, uptime_ms=2**64 - 1, period_ms=2**32 - 1,
        unix_ms=4_102_444_800_000, dropped=2**32 - 1,
        channels=tuple(
            Channel(i, 0xFFFF & ~ST_INVALID, {
                "voltage": 1_000_000, "current": 10_000_000, "power": -(10**10),
                "reactive_power": 10**10, "apparent_power": 10**10, "power_factor": -1000,
                "frequency": 100_000, "energy": 2**63 - 1, "energy_delta": -(2**53),
            })
            for i in range(8)
        ),
    ),
]


def to_json_map(m: Any) -> Any:
    """A reading map with JSON-safe (string) keys, for the firmware scripts."""
    if isinstance(m, dict):
        return {str(k): to_json_map(v) for k, v in m.items()}
    if isinstance(m, list):
        return [to_json_map(v) for v in m]
    return m


def firmware_build(fw: FirmwareRunner, frames: list[Frame], key: bytes = KEY) -> dict[str, Any]:
    req = {
        "device": DEVICE,
        "key": key.hex(),
        "frames": [to_json_map(reading_map(f)) for f in frames],
    }
    result: dict[str, Any] = fw.run_json("frame_build.py", req)
    return result


@pytest.fixture(scope="module")
def cddl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (REPO / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"```cddl\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/protocol.md must hold exactly one cddl block"
    path = tmp_path_factory.mktemp("cddl") / "protocol.cddl"
    path.write_text(blocks[0])
    return path


def zcbor_valid(cddl: Path, message: bytes, tmp: Path, rule: str = "gridedge-frame") -> bool:
    """Validate with the zcbor CLI (hex input: its binary-file input path is broken in 0.9)."""
    data = tmp / "frame.cborhex"
    data.write_text(message.hex())
    zcbor = Path(sys.executable).parent / "zcbor"
    proc = subprocess.run(
        [str(zcbor), "validate", "-c", str(cddl), "-t", rule, "-i", str(data)],
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode == 0


def test_firmware_frames_verify_in_gateway(fw: FirmwareRunner) -> None:
    built = firmware_build(fw, SAMPLES)
    decoder = FrameDecoder({DEVICE: KEY})
    for expected, hexmsg in zip(SAMPLES, built["messages"], strict=True):
        assert decoder.decode(bytes.fromhex(hexmsg)) == expected


def test_three_implementations_give_identical_bytes(fw: FirmwareRunner) -> None:
    """Firmware (this interpreter) and the gateway's cbor2 encoder agree byte for byte."""
    built = firmware_build(fw, SAMPLES)
    assert built["messages"] == [build_frame(f, KEY).hex() for f in SAMPLES]


def test_gateway_frames_parse_in_firmware(fw: FirmwareRunner) -> None:
    messages = [build_frame(f, KEY).hex() for f in SAMPLES]
    wrong_key = build_frame(SAMPLES[0], OTHER_KEY).hex()
    out = fw.run_json(
        "frame_parse.py", {"keys": {DEVICE: KEY.hex()}, "messages": [*messages, wrong_key]}
    )
    for frame, res in zip(SAMPLES, out["messages"], strict=False):
        assert res["reading"] == pairs(to_json_map(reading_map(frame)))
    assert out["messages"][-1] == {"err": "bad MAC"}


def pairs(v: Any) -> Any:
    if isinstance(v, dict):
        return sorted([int(k), pairs(x)] for k, x in v.items())
    if isinstance(v, list):
        return [pairs(x) for x in v]
    return v


def test_serial_framing_both_ways(fw: FirmwareRunner) -> None:
    built = firmware_build(fw, SAMPLES)
    # Firmware-framed bytes through the gateway, after line noise: noise glued to a frame
    # costs that one frame; after the next delimiter the reader is in step again.
    wire = [bytes.fromhex(w) for w in built["wire"]]
    messages = [bytes.fromhex(m) for m in built["messages"]]
    results = list(framing.Deframer().feed(b"\x13\x37garbage" + b"".join(wire)))
    assert isinstance(results[0], ProtocolError)
    assert results[1:] == messages[1:]
    # A sender that opens with a delimiter loses nothing; fed byte by byte, the same.
    deframer = framing.Deframer()
    stream = b"\x13\x37garbage\x00" + b"".join(wire)
    results = [r for i in range(len(stream)) for r in deframer.feed(stream[i : i + 1])]
    assert isinstance(results[0], ProtocolError)
    assert results[1:] == messages
    # Gateway-framed bytes, one with a flipped bit, through the firmware.
    good = [framing.encode(build_frame(f, KEY)) for f in SAMPLES]
    bad = bytearray(good[0])
    bad[10] ^= 0x04
    out = fw.run_json("frame_parse.py", {"keys": {}, "stream": (bytes(bad) + b"".join(good)).hex()})
    assert "CRC" in out["stream"][0]["err"]
    assert [s["message"] for s in out["stream"][1:]] == [build_frame(f, KEY).hex() for f in SAMPLES]


def test_frames_validate_against_cddl(
    fw: FirmwareRunner, cddl_path: Path, tmp_path: Path
) -> None:
    for hexmsg in firmware_build(fw, SAMPLES)["messages"]:
        assert zcbor_valid(cddl_path, bytes.fromhex(hexmsg), tmp_path)


def test_commands_validate_against_cddl(cddl_path: Path, tmp_path: Path) -> None:
    """The gateway's sealed commands are what section 8 says, and a frame is no command."""
    from gateway.command import Command

    key = bytes(range(32))
    for c in (Command(DEVICE, 1, 1_789_948_860_000, b"c1", "reboot"),
              Command(DEVICE, 2**40, 1_789_948_860_000, bytes(16), "relay",
                      {"state": "off", "seconds": 600}),
              Command(DEVICE, 3, 1_789_948_860_000, b"t", "time", sent_ms=1_789_948_800_000)):
        assert zcbor_valid(cddl_path, c.seal(key), tmp_path, "gridedge-command")
        assert not zcbor_valid(cddl_path, c.seal(key), tmp_path)
    assert not zcbor_valid(cddl_path, Command(DEVICE, 1, 5, b"c1", "x").seal(key), tmp_path,
                           "gridedge-command")  # an expiry that is no Unix ms


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m[8][0].__setitem__(2, 1_000_001),  # voltage above range
        lambda m: m[8][0].__setitem__(7, -1001),  # power factor below range
        lambda m: m.__setitem__(0, 2),  # another protocol version
        lambda m: m.__setitem__(8, []),  # no channels
        lambda m: m.__delitem__(3),  # no sequence number
        lambda m: m[8][0].__setitem__(2, [1, 2]),  # measurement of two values
    ],
)
def test_cddl_rejects_what_gateway_rejects(
    mutate: Any, cddl_path: Path, tmp_path: Path
) -> None:
    """The schema is not vacuous: each mutation fails both zcbor and the gateway."""
    m = reading_map(SAMPLES[0])
    mutate(m)
    from gateway import cose

    msg = cose.Mac0.sign(KEY, DEVICE.encode(), cbor2.dumps(m, canonical=True))
    assert not zcbor_valid(cddl_path, msg, tmp_path)
    with pytest.raises(ProtocolError):
        FrameDecoder({DEVICE: KEY}).decode(msg)


def test_mac_verifies_with_pycose(fw: FirmwareRunner) -> None:
    for hexmsg in firmware_build(fw, SAMPLES)["messages"]:
        msg = Mac0Message.decode(bytes.fromhex(hexmsg))
        msg.key = SymmetricKey(k=KEY)
        assert msg.verify_tag()
        msg.key = SymmetricKey(k=OTHER_KEY)
        assert not msg.verify_tag()


def test_every_bit_flip_and_truncation_rejected(fw: FirmwareRunner) -> None:
    """Gateway and firmware both reject every 1-bit corruption and every truncation."""
    message = bytes.fromhex(firmware_build(fw, SAMPLES[1:2])["messages"][0])
    variants = [message[:n] for n in range(len(message))]
    for i in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[i // 8] ^= 1 << (i % 8)
        variants.append(bytes(flipped))
    decoder = FrameDecoder({DEVICE: KEY})
    reasons: dict[str, int] = {}
    for v in variants:
        with pytest.raises(ProtocolError) as info:
            decoder.decode(v)
        reasons[info.value.reason] = reasons.get(info.value.reason, 0) + 1
    assert {Reason.TRUNCATED, Reason.BAD_MAC, Reason.MALFORMED} <= set(reasons)
    out = fw.run_json(  # ~2,000 results: more than MicroPython's default 2 MB heap holds
        "frame_parse.py",
        {"keys": {DEVICE: KEY.hex()}, "messages": [v.hex() for v in variants]},
        heapsize="16M",
    )
    accepted = [i for i, r in enumerate(out["messages"]) if "err" not in r]
    assert accepted == []
    # Control: the unmodified message is accepted by both.
    assert decoder.decode(message).seq == 1
    assert "reading" in fw.run_json(
        "frame_parse.py", {"keys": {DEVICE: KEY.hex()}, "messages": [message.hex()]}
    )["messages"][0]


def test_frame_sizes_against_json() -> None:
    """CBOR + MAC is well under half the size of the same reading as readable JSON."""
    from tools.frame_size import sizes

    rows = {r["channels"]: r for r in sizes()}
    assert rows[1]["frame_bytes"] < rows[1]["json_bytes"] / 2
    assert rows[2]["frame_bytes"] < rows[2]["json_bytes"] / 2
    assert rows[2]["frame_bytes"] > rows[1]["frame_bytes"]
    json.dumps(rows)


fw_frame = firmware_module("gemeter.frame")
fw_relaystate = firmware_module("gemeter.relaystate")
fw_channels = firmware_module("channel_map")  # tests/firmware/lib: a dict as a channel


@given(frames())
@settings(max_examples=200, deadline=None)
def test_random_frames_firmware_to_gateway(f: Frame) -> None:
    """Any valid frame built by the firmware (in-process, CPython) decodes to itself. The
    channel maps are the tests' (a meter's aggregates write their own: tests/firmware/
    test_frame.py); the reading around them, the header and the MAC are the firmware's."""
    m = reading_map(f)
    channels = [fw_channels.Encoded(c) for c in m[8]]
    built = fw_frame.FrameBuilder(f.device_id, KEY).build(
        m[2], m[3], m[4], m[6], channels, unix_ms=m.get(5), dropped=m.get(7, 0),
        results=cbor2.dumps(m[9], canonical=True) if 9 in m else None,  # as cmdrun encodes
        relays=fw_relaystate.encoded({n: [25, 1, on] for n, on in f.relays})
        if f.relays else None,  # the board's relays as relay.py keeps them: [pin, level, on]
    )
    assert built == build_frame(f, KEY)
    assert FrameDecoder({f.device_id: KEY}).decode(built) == f
