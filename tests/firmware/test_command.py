"""Commands down to a meter (firmware/gemeter/command.py, gateway/command.py): the gateway
seals, the firmware opens, under both interpreters; every bad command is refused with one
reason, and no byte string makes the reader raise anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.command import DOWN_LABEL, Command, derive
from gateway.cose import Mac0
from tests.support.fwrunner import FirmwareRunner, firmware_module

command = firmware_module("gemeter.command")
KEY = bytes(range(32))
NOW = 1_789_948_800_000


def cmd(counter: int = 1, op: str = "relay", cid: bytes = b"c1", device: str = "mtr-1",
        expires: int = NOW + 60_000, **args: int | str | bool | None) -> bytes:
    return Command(device, counter, expires, cid, op, dict(args)).seal(KEY)


def test_the_downlink_key_is_rfc5869_hkdf() -> None:
    """RFC 5869 test case 3 (SHA-256, empty salt and info): the first 32 bytes of its
    OKM, from both halves; and the downlink key is not the device key."""
    okm = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
    assert derive(b"\x0b" * 22, b"").hex() == okm
    assert command.derive(b"\x0b" * 22, b"").hex() == okm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    assert HKDF(hashes.SHA256(), 32, None, DOWN_LABEL).derive(KEY) == derive(KEY, DOWN_LABEL)
    assert derive(KEY, DOWN_LABEL) != KEY


def test_a_sealed_command_is_opened_on_the_board(fw: FirmwareRunner) -> None:
    """Every refusal the firmware makes, under the interpreter the board runs."""
    other_key = Command("mtr-1", 9, NOW + 60_000, b"x", "reboot").seal(bytes(32))
    uplink = Mac0.sign(KEY, b"mtr-1", b"\xa0")  # a frame MACed with the device key
    cases = [
        ("first", cmd(1, "relay", b"c1", state="off", seconds=600)),
        ("again", cmd(1, "relay", b"c1", state="off", seconds=600)),  # redelivered
        ("replay", cmd(1, "reboot", b"c2")),  # a new id under a used counter
        ("later", cmd(5, "read", b"c3")),
        ("reordered", cmd(4, "read", b"c4")),
        ("expired", cmd(6, "time", b"c5", expires=NOW - 1)),
        ("other_key", other_key),
        ("uplink", uplink),
        ("other_device", cmd(7, "reboot", b"c6", device="mtr-2")),
        ("junk", b"\xd1\x84\x40\xa0"),
    ]
    lines = "\n".join(f"    ({name!r}, binascii.unhexlify({m.hex()!r}))," for name, m in cases)
    out = fw.run(
        "import binascii\n"
        "from gemeter.command import Commands, CommandError\n"
        f"c = Commands('mtr-1', bytes(range(32)))\n"
        f"for name, msg in [\n{lines}\n]:\n"
        "    try:\n"
        f"        got = c.open(msg, {NOW})\n"
        "        args = sorted(got['args'].items())\n"
        "        print(name, 'ok', got['op'], got['counter'], got['id'], args)\n"
        "    except CommandError as e:\n"
        "        print(name, 'refused', e.args[0], c.counter)\n"
    )
    assert out.splitlines() == [
        "first ok relay 1 b'c1' [('seconds', 600), ('state', 'off')]",
        "again refused duplicate 1",
        "replay refused replayed 1",
        "later ok read 5 b'c3' []",
        "reordered refused replayed 5",
        "expired refused expired 5",
        "other_key refused bad_mac 5",
        "uplink refused bad_mac 5",
        "other_device refused wrong_device 5",
        "junk refused malformed 5",
    ]


def test_a_meter_without_a_clock_leaves_expiry_to_the_gateway() -> None:
    c = command.Commands("mtr-1", KEY)
    assert c.open(cmd(1, expires=0), None)["op"] == "relay"


def test_a_command_over_the_size_limit_is_not_sealed_nor_opened() -> None:
    with pytest.raises(ValueError, match="at most 512"):
        cmd(1, "set", blob="x" * 600)
    with pytest.raises(command.CommandError, match="malformed"):
        command.Commands("mtr-1", KEY).open(b"\x00" * 513)


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_any_bytes_are_refused_with_a_reason(data: bytes) -> None:
    c = command.Commands("mtr-1", KEY)
    with pytest.raises(command.CommandError) as e:
        c.open(data, NOW)
    assert e.value.args[0] in ("malformed", "bad_mac", "wrong_device")
    assert c.counter == 0


@given(st.integers(0, 200), st.integers(1, 255))
@settings(max_examples=300, deadline=None)
def test_no_changed_byte_makes_a_command_pass(at: int, flip: int) -> None:
    msg = bytearray(cmd(3, "relay", b"c9", state="on"))
    msg[at % len(msg)] ^= flip
    c = command.Commands("mtr-1", KEY)
    with pytest.raises(command.CommandError):
        c.open(bytes(msg), NOW)
    assert c.counter == 0


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                    | st.text(max_size=8) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.integers(0, 30) | st.text(max_size=4), inner,
                                      max_size=3), max_leaves=12))
@settings(max_examples=500, deadline=None)
def test_the_reader_reads_what_cbor2_writes(value: object) -> None:
    import cbor2

    data = cbor2.dumps(value, canonical=True)
    depth = _depth(value)
    if depth > 3:
        with pytest.raises(command.CommandError):
            command.loads(data)
    else:
        assert command.loads(data) == value


def _depth(v: object) -> int:
    """The nesting level of the deepest item read: 0 for a scalar or an empty container."""
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=-1)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=-1)
    return 0
