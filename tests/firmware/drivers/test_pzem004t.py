"""PZEM-004T v3: the emulator against the register map, and the driver against the emulator.

Driver tests run under CPython and the MicroPython unix port: the driver talks to a
machine.UART of the virtual board, behind which emulated modules answer.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tests.support.fwrunner import FirmwareRunner
from tools.emulators.pzem004t import PZEM004T, crc16, with_crc
from tools.vboard import VirtualBoard

# ---------------------------------------------------------------- emulator (datasheet facts)


def test_crc_check_value() -> None:
    assert with_crc(bytes.fromhex("010400000002"))[-2:] == bytes.fromhex("71cb")
    assert crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS catalogue check value


def test_emulator_read_input_registers() -> None:
    dev = PZEM004T(0x01)
    dev.set_reading(voltage=229.9, current=70.123, power=16_000.5, frequency=49.9, pf=0.87)
    dev.energy_wh = 0x0001_2345
    reply = dev.handle(with_crc(bytes.fromhex("01040000000a")))
    assert reply is not None
    data = reply.data
    assert len(data) == 25 and data[:3] == bytes([1, 4, 20])
    regs = struct.unpack(">10H", data[3:23])
    assert regs[0] == 2299
    assert (regs[1], regs[2]) == (70123 & 0xFFFF, 70123 >> 16)  # low word first
    assert (regs[3], regs[4]) == (160005 & 0xFFFF, 160005 >> 16)
    assert (regs[5], regs[6]) == (0x2345, 0x0001)
    assert regs[7:] == (499, 87, 0x0000)
    assert crc16(data[:-2]) == struct.unpack("<H", data[-2:])[0]


def test_emulator_errors_and_addressing() -> None:
    dev = PZEM004T(0x05)
    assert dev.handle(with_crc(bytes.fromhex("01040000000a"))) is None  # not its address
    bad_crc = with_crc(bytes.fromhex("05040000000a"))[:-1] + b"\x00"
    assert dev.handle(bad_crc) is None  # a slave ignores a request with a bad CRC
    reply = dev.handle(with_crc(bytes.fromhex("050400080005")))  # 0x08 + 5 > 10 registers
    assert reply is not None and reply.data[:3] == bytes([5, 0x84, 0x02])
    reply = dev.handle(with_crc(bytes.fromhex("0507")))
    assert reply is not None and reply.data[:3] == bytes([5, 0x87, 0x01])
    assert dev.handle(with_crc(bytes.fromhex("0006000200ff"))) is None  # broadcast: no reply
    reply = dev.handle(with_crc(bytes.fromhex("f80600020100")))  # address 0x100: illegal
    assert reply is not None and reply.data[1:3] == bytes([0x86, 0x03])
    reply = dev.handle(with_crc(bytes.fromhex("f80600020009")))
    assert reply is not None and reply.data == with_crc(bytes.fromhex("f80600020009"))
    assert dev.address == 0x09


def test_emulator_energy_reset_and_alarm() -> None:
    dev = PZEM004T()
    dev.set_reading(230, 10, 2300)
    dev.advance(3600)
    assert dev.energy_wh == 2300
    reply = dev.handle(with_crc(bytes.fromhex("0142")))
    assert reply is not None and reply.data == with_crc(bytes.fromhex("0142"))
    assert dev.energy_wh == 0
    dev.alarm_threshold_w = 2000
    assert dev.input_registers()[9] == 0xFFFF


# ---------------------------------------------------------------- driver on the virtual board


def run_ops(fw: FirmwareRunner, board: VirtualBoard, ops: list[Any], **kw: Any) -> list[Any]:
    result: list[Any] = fw.run_json("pzem_ops.py", {"uart": 2, "ops": ops, **kw}, env=board.env())
    return result


def test_read_scaling_edge_cases(fw: FirmwareRunner, vboard: VirtualBoard) -> None:
    dev = PZEM004T(0x01)
    vboard.attach_uart("uart2", dev)
    readings = []
    cases = [
        dict(voltage=230.0, current=0.0, power=0.0, frequency=50.0, pf=0.0),  # zero current
        dict(voltage=253.7, current=99.999, power=25_367.4, frequency=60.0, pf=1.0),
        dict(voltage=6553.5, current=4_294_967.295, power=429_496_729.5, frequency=6553.5,
             pf=1.0),  # every register at its maximum: 32-bit values across both words
    ]
    ops = []
    for case in cases:
        ops.append(["read", 1])
        readings.append(case)
    # The driver reads, the test changes the emulator between runs (one run per case).
    got = []
    for case in cases:
        dev.set_reading(**case)
        dev.energy_wh = 0xFFFF_FFFF if case["voltage"] > 1000 else 65_536
        got.append(run_ops(fw, vboard, [["read", 1]])[0])
    assert got[0] == {"v": 230_000, "i": 0, "p": 0, "e": 65_536, "f": 50_000, "pf": 0,
                      "alarm": False, "si": [230.0, 0.0, 0.0, 50.0, 0.0]}
    assert got[1]["i"] == 99_999 and got[1]["p"] == 25_367_400 and got[1]["f"] == 60_000
    assert got[1]["alarm"] is True  # 25.4 kW is over the default 23 kW threshold
    assert got[2]["v"] == 6_553_500 and got[2]["i"] == 4_294_967_295
    assert got[2]["p"] == 429_496_729_500 and got[2]["e"] == 4_294_967_295


def test_several_modules_on_one_bus(fw: FirmwareRunner, vboard: VirtualBoard) -> None:
    devs = {a: PZEM004T(a) for a in (0x01, 0x02, 0x07)}
    for a, d in devs.items():
        d.set_reading(voltage=230 + a, current=a, power=100 * a)
        vboard.attach_uart("uart2", d)
    out = run_ops(fw, vboard, [["read", 1], ["read", 2], ["read", 7], ["scan", list(range(1, 10))]])
    assert [r["v"] for r in out[:3]] == [231_000, 232_000, 237_000]
    assert [r["p"] for r in out[:3]] == [100_000, 200_000, 700_000]
    assert out[3] == [1, 2, 7]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("crc", "crc"), ("silence", "timeout"), ("short", "timeout"), ("exception", "exception")],
)
def test_faults_raise_and_never_return_stale_values(
    fw: FirmwareRunner, vboard: VirtualBoard, fault: str, kind: str
) -> None:
    dev = PZEM004T(0x01)
    dev.set_reading(voltage=231.0, current=1.0, power=230.0)
    dev.faults_at = {2: fault}
    vboard.attach_uart("uart2", dev)
    out = run_ops(fw, vboard, [["read", 1], ["read", 1], ["read", 1], ["errors", 1]])
    assert out[0]["v"] == 231_000
    assert out[1]["error"] == kind  # an error, not the previous reading
    assert out[2]["v"] == 231_000  # and the next request works again
    assert out[3]["errors"][kind] == 1


class RisingVoltage(PZEM004T):
    """A module whose voltage rises 0.1 V per request: every reply is distinguishable."""

    def handle(self, request: bytes) -> Any:
        self.voltage_dv += 1
        return super().handle(request)


def test_garbage_and_late_replies_resync(fw: FirmwareRunner, vboard: VirtualBoard) -> None:
    dev = RisingVoltage(0x01)
    dev.voltage_dv = 2290
    dev.faults_at = {1: "garbage", 3: "late"}
    vboard.attach_uart("uart2", dev)
    out = run_ops(fw, vboard, [["read", 1], ["read", 1], ["read", 1], ["read", 1], ["read", 1],
                               ["errors", 1]])
    assert out[0]["v"] == 229_100  # garbage before the reply is skipped
    assert out[1]["v"] == 229_200
    assert out[2]["error"] == "timeout"  # the reply to request 3 comes too late...
    assert out[3]["v"] == 229_400  # ...and lands in front of reply 4: not taken for it
    assert out[4]["v"] == 229_500
    errors = out[5]["errors"]
    assert errors["desync"] == 2 and errors["timeout"] == 1  # garbage, late frame skipped


def test_dead_link_gives_errors_not_values(fw: FirmwareRunner, vboard: VirtualBoard) -> None:
    vboard.uart("uart2")  # the bus exists, nothing is attached: an unplugged module
    out = run_ops(fw, vboard, [["read", 1], ["read", 1]], timeout_ms=30)
    assert out == [{"error": "timeout", "msg": "PZEM 0x01: no reply within 30 ms"}] * 2


def test_energy_reset_alarm_and_address(fw: FirmwareRunner, vboard: VirtualBoard) -> None:
    dev = PZEM004T(0x01)
    dev.energy_wh = 12_345
    vboard.attach_uart("uart2", dev)
    out = run_ops(fw, vboard, [
        ["read", 1], ["reset_energy", 1], ["read", 1],
        ["set_alarm", 1, 1500], ["alarm", 1], ["set_alarm", 1, 30_000],
        ["set_address", 1, 0x22], ["read", 0x22], ["scan", [1, 0x22]],
    ])
    assert out[0]["e"] == 12_345 and out[1] == "ok" and out[2]["e"] == 0
    assert out[3] == "ok" and out[4] == 1500 and dev.alarm_threshold_w == 1500
    assert "value_error" in out[5]
    assert out[6] == 0x22 and dev.address == 0x22
    assert out[7]["v"] == 230_000 and out[8] == [0x22]
    # set_address went to the general address 0xF8, as the manual requires.
    assert any(frame[0] == 0xF8 and frame[1] == 0x06 for frame in vboard.uart("uart2").written)


# ---------------------------------------------------------------- a module that stops answering


def pzem_hook(board: VirtualBoard, dev: PZEM004T) -> Any:
    def hook(args: list[str]) -> str:
        if args[0] == "silent":
            dev.go_silent()
        elif args[0] == "wake":
            dev.wake()
        elif args[0] == "noise":
            dev.fault = "noise"
        elif args[0] == "clear":
            dev.fault = None
        elif args[0] == "inject":
            board.uart("uart2").inject(bytes.fromhex(args[1]))
        elif args[0] == "requests":
            return str(dev.requests)
        return "OK"

    return hook


# Short times for the test: 30 ms reply timeout, back-off 50 ms doubling up to 1 s.
FAST = {"timeout_ms": 30, "backoff_ms": 50, "backoff_max_ms": 1000}
ST_INVALID_TIMEOUT = 0x01 | 0x04  # docs/protocol.md section 3


def test_emulator_goes_silent_for_a_while() -> None:
    now = [100.0]
    dev = PZEM004T(0x01, clock=lambda: now[0])
    dev.go_silent(5.0)
    assert dev.handle(with_crc(bytes.fromhex("01040000000a"))) is None
    now[0] += 5.0
    assert dev.handle(with_crc(bytes.fromhex("01040000000a"))) is not None  # answers again
    assert (dev.requests, dev.unanswered) == (2, 1)
    dev.fault = "noise"
    reply = dev.handle(with_crc(bytes.fromhex("01040000000a")))
    assert reply is not None and len(reply.data) == 25
    noise = reply.data
    assert not any(  # no valid frame anywhere in the noise
        crc16(noise[i : i + n - 2]) == struct.unpack("<H", noise[i + n - 2 : i + n])[0]
        for n in (4, 5, 7, 8, 25) for i in range(len(noise) - n + 1)
    )


def test_silent_module_backs_off_and_recovers_without_reboot(
    fw: FirmwareRunner, vboard: VirtualBoard
) -> None:
    dev = PZEM004T(0x01)
    dev.set_reading(voltage=231.0, current=1.0, power=230.0)
    vboard.attach_uart("uart2", dev)
    vboard.hooks["pzem"] = pzem_hook(vboard, dev)
    out = run_ops(fw, vboard, [
        ["read", 1],
        ["host", "pzem", "silent"],
        ["reads", 1, 25, 10],  # 25 samples, 10 ms apart, while it says nothing
        ["host", "pzem", "requests"],
        ["period", 1, 5],  # what a frame carries meanwhile
        ["host", "pzem", "inject", "a5ff001301"],  # stale bytes on the line
        ["host", "pzem", "wake"],
        ["read_until_ok", 1, 3000],
        ["period", 1, 3],
        ["stats", 1],
    ], **FAST)
    assert out[0]["v"] == 231_000
    assert out[2] == {"timeout": 25}  # never a value, never zeros
    # Three tries, then one per back-off (50, 100, 200... ms): not one request per sample.
    assert int(out[3]) - 1 <= 8
    assert out[4] == {"0": 0, "1": ST_INVALID_TIMEOUT, "11": 0, "12": 5}  # no quantity keys
    assert out[7]["reading"]["v"] == 231_000  # answers again: read without a reboot
    assert out[8]["1"] == 0 and out[8]["2"] == [231_000] * 3 and out[8]["11"] == 3
    stats = out[9]
    assert stats["outages"] == 1 and stats["recoveries"] == 1 and not stats["silent"]
    assert stats["skipped"] >= 15
    assert stats["stale_bytes"] >= 5  # the line was drained before the request that recovered


def test_module_sending_noise_is_invalid_then_recovers(
    fw: FirmwareRunner, vboard: VirtualBoard
) -> None:
    dev = PZEM004T(0x01)
    dev.set_reading(voltage=229.0, current=2.0, power=450.0)
    dev.fault = "noise"
    vboard.attach_uart("uart2", dev)
    vboard.hooks["pzem"] = pzem_hook(vboard, dev)
    out = run_ops(fw, vboard, [
        ["reads", 1, 20, 10], ["host", "pzem", "requests"], ["host", "pzem", "clear"],
        ["read_until_ok", 1, 3000], ["stats", 1],
    ], **FAST)
    assert "ok" not in out[0] and set(out[0]) <= {"desync", "crc", "timeout"}
    assert int(out[1]) <= 8  # backed off
    assert out[3]["reading"]["v"] == 229_000
    stats = out[4]
    assert stats["outages"] == 1 and stats["recoveries"] == 1
    assert stats["errors"]["desync"] + stats["errors"]["crc"] >= 3


def test_a_read_allocates_almost_nothing(fw_micropython: FirmwareRunner) -> None:
    """Under MicroPython, on a UART stand-in that allocates nothing itself (a board's
    UART.read still returns a new bytes object): the request is made once per address
    and the Reading is the driver's own, filled in place. A read allocated 832 bytes
    before (request bytes, an unpacked tuple, a new Reading); a sampler reads every
    module every sample."""
    out = fw_micropython.run_code("""
import gc, struct
from gemeter.drivers.pzem004t import PZEM004T, crc16
regs = [2304, 4200, 0, 9500, 0, 1234, 0, 500, 98, 0]
body = bytes([1, 4, 20]) + b"".join(struct.pack(">H", r) for r in regs)
REPLY = body + struct.pack("<H", crc16(body))
class UART:
    pending = 0
    def write(self, b):
        self.pending = len(REPLY)
    def any(self):
        return self.pending
    def read(self, n=None):
        self.pending = 0
        return REPLY
d = PZEM004T(UART(), 1, gap_ms=0)
first = d.read()
gc.collect()
gc.disable()
before = gc.mem_alloc()
for _ in range(100):
    r = d.read()
per_read = (gc.mem_alloc() - before) // 100
gc.enable()
print(json.dumps({"per_read": per_read, "same": r is first,
                  "values": [r.voltage_mv, r.current_ma, r.power_mw, r.energy_wh,
                             r.frequency_mhz, r.pf_milli, r.alarm]}))
""")
    assert out["values"] == [230400, 4200, 950000, 1234, 50000, 980, False]
    assert out["same"] and out["per_read"] <= 256, out
