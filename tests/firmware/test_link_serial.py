"""Commands down the serial link: the meter's UART takes COBS + CRC-32 frames (the framing
of its own frames, docs/protocol.md section 5) and runs what they carry, under both
interpreters; the splitting of the line into bodies under hypothesis."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway import framing
from gateway.command import Command, wrap
from gateway.protocol import FrameDecoder
from gateway.registry import fingerprint
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner, firmware_module
from tools.vboard import VirtualBoard

link_serial = firmware_module("gemeter.link_serial")  # with unframe.take, below
unframe = firmware_module("gemeter.unframe")


def sealed(counter: int, cid: bytes, op: str = "read", key: bytes = KEY) -> bytes:
    return Command(DEVICE, counter, int(time.time() * 1000) + 60_000, cid, op).seal(key)


def damaged(frame: bytes) -> bytes:
    """The frame with one bit flipped inside its body (never into a delimiter)."""
    out = bytearray(frame)
    i = next(i for i in range(len(out) // 2, len(out) - 1) if out[i] ^ 0x10)
    out[i] ^= 0x10
    return bytes(out)


def test_commands_come_down_the_uart_and_their_results_go_up(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """A read runs and its result goes up at once (the period is 60 s); sent again (the
    gateway did not hear back), it does not run twice but its result is repeated. A frame
    damaged on the line, a forged command and 600 bytes of noise cost only themselves."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=60)
    read = framing.encode(sealed(5, b"s1"))
    meter.link_bus.inject(b"\x00" + read + damaged(framing.encode(sealed(6, b"s2")))
                          + b"\x01" * 600 + b"\x00" + read
                          + framing.encode(sealed(7, b"s3", key=bytes(32))))
    stats = fw.run_json("app_run.py", meter.request(40), env=vboard.env())
    frames, errors = meter.frames()
    assert errors == []
    assert [r for f in frames for r in f.results] == [(b"s1", "done", ""), (b"s1", "done", "")]
    assert stats["commands_refused"] == 2  # the damaged one (its CRC) and the forgery
    assert stats["commands_dropped"] == 1  # the noise: longer than any command
    assert all(f.period_ms < 2000 for f in frames if f.results)


def test_a_burst_beyond_the_inbox_is_dropped_and_counted(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """Ten short bodies of noise in one read: four wait (and are refused), six are dropped
    and counted; the command after them, in a later read, runs."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=60)
    meter.link_bus.inject(b"\x05\x00" * 10 + b"\x00" * 600 + framing.encode(sealed(10, b"b0")))
    stats = fw.run_json("app_run.py", meter.request(20), env=vboard.env())
    frames, _ = meter.frames()
    assert [r for f in frames for r in f.results] == [(b"b0", "done", "")]
    assert stats["commands_dropped"] == 6 and stats["commands_refused"] == 4


class Port:
    """A UART's receiving side at the hardware edge: the bytes given, in reads of any size."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def any(self) -> int:
        return len(self.data)

    def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def write(self, data: bytes) -> int:
        return len(data)


class Ring:
    def __len__(self) -> int:
        return 0


@given(noise=st.lists(st.binary(max_size=700), max_size=6),
       messages=st.lists(st.binary(min_size=1, max_size=512), max_size=4))
def test_any_line_costs_only_itself(noise: list[bytes], messages: list[bytes]) -> None:
    """Any bytes on the line, then framed messages: the inbox never holds more than four
    bodies of at most 520 bytes, nothing raises, and after a delimiter every framed
    message comes out whole."""
    port = Port(b"".join(noise))
    link = link_serial.SerialLink(port)
    while port.data:
        link.service(Ring())
        assert len(link.inbox) <= unframe.MAX_INBOX
        assert all(len(b) <= 520 for b in link.inbox)
    for body in link.inbox:  # whatever noise made a body of: decoded or refused
        with contextlib.suppress(ValueError):
            unframe.decode(body)
    port.data = b"\x00"  # the gateway's resync: ends what the noise left unfinished
    link.service(Ring())
    link.inbox.clear()
    port.data = b"".join(framing.encode(m) for m in messages)
    while port.data:
        link.service(Ring())
    assert [unframe.decode(b) for b in link.inbox] == messages


def test_factory_reset_must_name_the_device_and_keeps_what_reaches_it(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """A factory reset that does not name the meter fails; one that does puts the settings
    back to the defaults but for the device id and the link's, keeps the key, and
    restarts the board as soon as its result is out (the virtual board's reset exits 75),
    not at the end of the 60-s period."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=60,
                         ring_size=16, serial_baud=57600, pzem_addresses="1")
    key_before = (tmp_path / "key.bin").read_bytes()
    expires = int(time.time() * 1000) + 60_000
    meter.link_bus.inject(b"".join(framing.encode(Command(
        DEVICE, n, expires, cid, "factory-reset", {"confirm": who}).seal(KEY))
        for n, cid, who in ((1, b"f1", "mtr-other"), (2, b"f2", DEVICE))))
    proc = fw.start(SCRIPTS / "app_run.py", env=vboard.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(meter.request(1000)))  # 10 s
    proc.stdin.close()
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    assert code == 75, proc.stderr.read()  # machine.reset()
    frames, _ = meter.frames()
    assert [r for f in frames for r in f.results] == [
        (b"f1", "failed", "confirm must name this device"),
        (b"f2", "done", "defaults; key and link kept; restarting")]
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "device_id": DEVICE, "link": "serial", "serial_baud": 57600}
    assert (tmp_path / "key.bin").read_bytes() == key_before


def test_key_rotate_moves_the_meter_to_the_new_key_from_its_result_on(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """The new key comes wrapped under the old one (for this command's counter alone);
    the meter stores it and MACs every frame from the result's on with it, and opens the
    next commands with it: one sealed with the old key is refused."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=1)
    new = bytes(range(200, 232))
    assert new != KEY
    expires = int(time.time() * 1000) + 60_000
    meter.link_bus.inject(b"\x00" * 200 + b"".join(framing.encode(c) for c in (
        Command(DEVICE, 5, expires, b"k1", "key-rotate",
                {"key": wrap(new, KEY, 5).hex()}).seal(KEY),
        Command(DEVICE, 6, expires, b"k2", "read").seal(new),
        Command(DEVICE, 7, expires, b"k3", "read").seal(KEY))))
    stats = fw.run_json("app_run.py", meter.request(150), env=vboard.env())
    by_key = []
    for message in framing.Deframer().feed(b"".join(meter.link_bus.written)):
        assert isinstance(message, bytes)
        decoder = FrameDecoder({DEVICE: KEY}, more=lambda _d: (new,))
        frame = decoder.decode(message)
        by_key.append(("new" if decoder.used == new else "old", frame.results))
    # The commands came before the first report: the first frame carries the results,
    # MACed with the new key already, and so is every frame after it.
    assert by_key[0] == ("new", ((b"k1", "done", "key " + fingerprint(new)),
                                 (b"k2", "done", "")))
    assert [k for k, _r in by_key] == ["new"] * len(by_key) and len(by_key) >= 2
    assert stats["commands_refused"] == 1  # k3: sealed with the old key
    assert (tmp_path / "key.bin").read_bytes() == new


def test_a_key_lost_between_remove_and_rename_is_taken_from_its_copy(
        fw: FirmwareRunner, tmp_path: Path) -> None:
    """atomic_write's fallback removes the key file before renaming the new one in: a
    power cut between the two must not lock the meter out. A short copy is no key."""
    out = fw.run(
        "from gemeter.keystore import KeyStore\n"
        f"p = {str(tmp_path / 'key.bin')!r}\n"
        "open(p + '.tmp', 'wb').write(bytes(range(32)))\n"
        "print(KeyStore(p).load() == bytes(range(32)))\n"
        "open(p + '.tmp', 'wb').write(bytes(31))\n"
        "print(KeyStore(p).load())\n")
    assert out.split() == ["True", "None"]


def test_a_key_the_flash_cannot_store_fails_the_rotation_and_keeps_the_old_one(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """The key file cannot be written (here: its temporary name is taken by a folder, as a
    failing flash refuses a write): the rotation fails, says why, and the meter goes on
    with its old key instead of stopping."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=1)
    (tmp_path / "key.bin.tmp").mkdir()
    new = bytes(range(200, 232))
    expires = int(time.time() * 1000) + 60_000
    meter.link_bus.inject(framing.encode(Command(
        DEVICE, 5, expires, b"k1", "key-rotate", {"key": wrap(new, KEY, 5).hex()}).seal(KEY)))
    stats = fw.run_json("app_run.py", meter.request(150), env=vboard.env())
    frames, errors = meter.frames()  # all verify with the old key
    assert errors == [] and stats["frames"] == len(frames) >= 2
    assert [r for f in frames for r in f.results] == [(b"k1", "failed", "cannot store the key")]
    assert (tmp_path / "key.bin").read_bytes() == KEY
