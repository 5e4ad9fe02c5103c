"""ADE7953: the emulator against the datasheet, and the driver against the emulator.

Driver tests run under CPython and the MicroPython unix port through the virtual board's
SPI bus (chip select on pin5, RESET on pin4).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.support.firmware_fixtures import VirtualMeter
from tests.support.fwrunner import FirmwareRunner
from tools.emulators import ade7953 as emu
from tools.vboard import VirtualBoard


def spi_read(chip: emu.ADE7953, addr: int, width: int) -> bytes:
    chip.select()
    out = chip.transfer(bytes([addr >> 8, addr & 0xFF, 0x80]) + bytes(width))
    chip.deselect()
    return out[3:]


def spi_write(chip: emu.ADE7953, addr: int, data: bytes) -> None:
    chip.select()
    chip.transfer(bytes([addr >> 8, addr & 0xFF, 0x00]) + data)
    chip.deselect()


# ---------------------------------------------------------------- emulator (datasheet facts)


def test_emulator_register_widths_and_defaults() -> None:
    chip = emu.ADE7953()
    spi_write(chip, 0x0FE, b"\xad")  # optimum settings, or readings are 1 % off
    spi_write(chip, 0x120, b"\x00\x30")
    assert spi_read(chip, 0x004, 1) == b"\x40"  # LCYCMODE default: RSTREAD
    assert spi_read(chip, 0x102, 2) == b"\x80\x04"  # CONFIG default
    assert spi_read(chip, 0x380, 4) == bytes.fromhex("00400000")  # AIGAIN 32-bit view
    assert spi_read(chip, 0x280, 3) == bytes.fromhex("400000")  # same register, 24-bit
    chip.set_channel(0, current=1.0, power=-100.0)  # export: negative active power
    assert spi_read(chip, 0x312, 4) == (-15400).to_bytes(4, "big", signed=True)
    assert spi_read(chip, 0x212, 3) == (-15400 & 0xFFFFFF).to_bytes(3, "big")


def test_emulator_32bit_view_copies_bit_23_of_unsigned_registers() -> None:
    """Datasheet: in the 32-bit view "the upper 8 bits are sign extended", also for the
    unsigned RMS registers, so a voltage of 2^23 counts or more has 0xFF on top."""
    chip = emu.ADE7953()
    spi_write(chip, 0x0FE, b"\xad")  # optimum settings: readings exact
    spi_write(chip, 0x120, b"\x00\x30")
    chip.voltage = 400.0  # 10,400,000 counts: above 2^23 = 8,388,608
    chip.set_channel(0, current=1.0, power=230.0)
    assert spi_read(chip, 0x21C, 3) == (10_400_000).to_bytes(3, "big")
    assert spi_read(chip, 0x31C, 4) == b"\xff" + (10_400_000).to_bytes(3, "big")
    chip.voltage = 230.0  # bit 23 clear: zeros on top
    assert spi_read(chip, 0x31C, 4) == (5_980_000).to_bytes(4, "big")


def test_emulator_reset_flag_and_unlock() -> None:
    chip = emu.ADE7953()
    assert int.from_bytes(spi_read(chip, 0x32E, 4), "big") & emu.IRQ_RESET
    assert int.from_bytes(spi_read(chip, 0x32E, 4), "big") == 0  # read-with-reset cleared it
    spi_write(chip, 0x120, b"\x00\x30")  # without the 0xAD unlock: ignored
    assert not chip.optimum_settings
    spi_write(chip, 0x0FE, b"\xad")
    spi_write(chip, 0x120, b"\x00\x30")
    assert chip.optimum_settings
    spi_write(chip, 0x102, b"\x00\x84")  # SWRST
    assert not chip.optimum_settings and chip.resets == 1


def test_emulator_energy_read_with_reset_and_period() -> None:
    chip = emu.ADE7953()
    chip.set_channel(0, current=10.0, power=2300.0)
    chip.advance(36)  # 23 Wh; without the optimum settings the chip reads 1 % high
    assert int.from_bytes(spi_read(chip, 0x31E, 4), "big", signed=True) == round(23 * 23688 * 1.01)
    assert int.from_bytes(spi_read(chip, 0x31E, 4), "big", signed=True) == 0
    chip.frequency = 50.0
    assert int.from_bytes(spi_read(chip, 0x10E, 2), "big") == 4474  # 223750/50 - 1


# A current transformer that delays the current by this much: a 20 W load at PF 0.1 then
# reads -5 W (the field report), since cos(84.26 deg + 7.17 deg) * 200 VA = -5.0 W.
CT_LAG_DEG = 7.17
PHCAL_LSB_DEG_50HZ = 4 / emu.CLKIN_HZ * 50 * 360  # 0.0201 deg


def test_emulator_ct_phase_shift_and_phcal() -> None:
    chip = emu.ADE7953()
    spi_write(chip, 0x0FE, b"\xad")
    spi_write(chip, 0x120, b"\x00\x30")
    chip.set_load(0, power=20.0, pf=0.1)  # 200 VA, inductive

    def watts() -> float:
        return int.from_bytes(spi_read(chip, 0x312, 4), "big", signed=True) / 154

    assert watts() == pytest.approx(20.0, abs=0.01)
    chip.channels[0].ct_phase_deg = CT_LAG_DEG
    assert watts() == pytest.approx(-5.0, abs=0.05)
    assert int.from_bytes(spi_read(chip, 0x10A, 2), "big", signed=True) < 0  # PFA follows
    spi_write(chip, 0x108, (357).to_bytes(2, "big"))  # PHCALA: 357 LSB = 7.18 deg
    assert watts() == pytest.approx(20.0, abs=0.05)
    spi_write(chip, 0x108, (0x200 | 357).to_bytes(2, "big"))  # sign bit: the wrong way
    assert watts() < -25
    assert emu.sign_magnitude(-357) == 0x200 | 357
    chip.chip_reset()  # a reset clears the calibration: the driver must write it again
    assert spi_read(chip, 0x108, 2) == b"\x00\x00"


def test_emulator_absent_reads_zeros() -> None:
    chip = emu.ADE7953(present=False)
    assert spi_read(chip, 0x102, 2) == b"\x00\x00"


# ---------------------------------------------------------------- driver on the virtual board


@pytest.fixture
def chip(vboard: VirtualBoard) -> emu.ADE7953:
    c = emu.ADE7953()
    vboard.attach_spi("spi1", "pin5", c)
    pulses = [0]  # RESET pulses seen on pin4: each costs the driver a 100 ms wait

    def reset_pin(v: int) -> None:
        if v == 0:
            pulses[0] += 1
            c.chip_reset()

    vboard.on_pin("pin4", reset_pin)

    def hook(args: list[str]) -> str:
        if args[0] == "pulses":
            return str(pulses[0])
        if args[0] == "advance":
            c.advance(float(args[1]))
        elif args[0] == "chip_reset":
            c.chip_reset()
        elif args[0] == "unplug":
            c.present = False
        elif args[0] == "voltage":
            c.voltage = float(args[1])
        elif args[0] == "plug":
            c.present = True
            c.chip_reset()  # power comes back: a fresh chip
        return "OK"

    vboard.hooks["chip"] = hook
    return c


def run(fw: FirmwareRunner, board: VirtualBoard, ops: list[Any], **kw: Any) -> list[Any]:
    out: list[Any] = fw.run_json("ade_ops.py", {"ops": ops, **kw}, env=board.env())
    return out


def test_init_sequence_and_scaling(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    chip.voltage = 231.5
    chip.frequency = 49.95
    chip.set_channel(0, current=5.0, power=1100.0, reactive=-150.0, apparent=1157.5, pf=0.95)
    chip.set_channel(1, current=0.0, power=0.0, apparent=0.0, pf=0.0)  # zero current
    out = run(fw, vboard, [["read"], ["version"]], reset_pin=True)
    assert chip.optimum_settings  # the 0xFE/0x120 unlock write happened
    assert chip.r16[emu.CONFIG] == 0x0004 and chip.r8[emu.LCYCMODE] == 0x40
    a, b = out[0]
    assert a[0] == 231_500 and a[1] == 5_000 and a[2] == 1_100_000
    assert a[3] == -150_000 and a[4] == 1_157_500
    assert a[5] == 950
    assert abs(a[6] - 49_950) <= 11  # frequency from PERIOD: one count is ~11 mHz at 50 Hz
    assert b[1:6] == [0, 0, 0, 0, 0]
    assert out[1] == emu.VERSION_VALUE


def test_calibration_drives_scaling(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    chip.front_end = emu.FrontEnd(volts=20_000.0, amps=50_000.0, watts=100.0, wh=10_000.0)
    chip.set_channel(1, current=80.0, power=-18_000.0)  # 24-bit edge: 4e6 counts, exporting
    cal = {"volts": 20_000.0, "amps": [50_000.0, 50_000.0], "watts": [100.0, 100.0],
           "wh": [10_000.0, 10_000.0]}
    out = run(fw, vboard, [["read"]], calibration=cal)
    a, b = out[0]
    assert a[0] == 230_000 and b[0] == 230_000
    assert b[1] == 80_000 and b[2] == -18_000_000 and b[5] == -1000


def test_energy_integrates_across_reads(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    chip.set_channel(0, current=10.0, power=2300.0)
    chip.set_channel(1, current=1.0, power=-230.0)  # channel B exports
    # 36 s at 2300 W is 23 Wh: 545k counts, well inside the 24-bit register (the firmware
    # reads every sample interval, long before it could overflow).
    out = run(fw, vboard, [
        ["read"], ["host", "chip", "advance", "36"], ["read"], ["read"],
        ["host", "chip", "advance", "36"], ["read"], ["energy"],
    ])
    assert out[0][0][7] == 0  # nothing accumulated before the first read
    assert out[2][0][7] == 23_000  # mWh
    # -2.3 Wh is 54482.4 counts: whole counts only, so one read may be 1 mWh short...
    assert out[2][1][7] in (-2_300, -2_299)
    assert out[3][0][7] == 0  # read-with-reset: the counter starts again
    # ...but the fractions are carried, never lost: the total is exact to one count.
    assert out[6][0] == 46_000 and abs(out[6][1] + 4_600) <= 1


def test_silent_chip_reset_is_detected_and_repaired(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    chip.set_channel(0, current=2.0, power=460.0)
    out = run(fw, vboard, [["read"], ["host", "chip", "chip_reset"], ["read"], ["read"],
                           ["stats"]])
    assert out[0][0][2] == 460_000
    assert out[2]["error"] == "reset"  # that sample is flagged...
    assert out[3][0][2] == 460_000  # ...and the next one is right again (re-initialised)
    assert chip.optimum_settings and chip.r16[emu.CONFIG] == 0x0004
    assert out[4] == {"resets": 1, "errors": {"absent": 0, "reset": 1}}


def test_absent_chip_is_an_error_not_zeros(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    chip.present = False
    chip.set_channel(0, current=2.0, power=460.0)
    out = run(fw, vboard, [["read"], ["read"], ["host", "chip", "plug"], ["read"], ["read"]])
    assert out[0]["error"] == "absent" and out[1]["error"] == "absent"
    assert out[2] == "OK"
    assert out[3]["error"] == "reset"  # it came up with reset defaults: initialised now
    assert out[4][0][2] == 460_000


def test_near_full_scale_rms_reads_positive_and_right(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    """RMS registers are unsigned 24-bit: above 2^23 counts (322.6 V, 83.9 A with the
    default calibration) the 32-bit view has 0xFF on top and must not read negative."""
    chip.voltage = 400.0
    chip.set_channel(0, current=100.0, power=38_000.0, apparent=40_000.0, pf=0.95)
    chip.set_channel(1, current=84.0, power=-30_000.0, apparent=33_600.0)  # exporting
    out = run(fw, vboard, [["read"], ["host", "chip", "voltage", "322.7"], ["read"]])
    a, b = out[0]
    assert (a[0], a[1], a[2], a[4]) == (400_000, 100_000, 38_000_000, 40_000_000)
    assert (b[0], b[1], b[2], b[4]) == (400_000, 84_000, -30_000_000, 33_600_000)
    assert out[2][0][0] == 322_700  # just above 2^23 counts


def test_floating_miso_is_absent_not_a_reset(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    """All ones (MISO floating high, no chip driving it) is an absent chip: no reset is
    counted and no RESET pulse (with its 100 ms wait) is spent per sample; the chip is
    initialised as soon as it answers again."""
    chip.present = False
    chip.absent_byte = 0xFF
    chip.set_channel(0, current=2.0, power=460.0)
    out = run(fw, vboard, [
        ["host", "chip", "pulses"], ["reads", 100], ["host", "chip", "pulses"], ["stats"],
        ["sleep_ms", 1100], ["reads", 2], ["host", "chip", "pulses"],
        ["host", "chip", "plug"], ["read"], ["read"],
    ], reset_pin=True)
    assert out[1] == {"absent": 100}
    # At most one recovery attempt: the back-off before the next one starts at 1 s.
    assert int(out[2]) - int(out[0]) <= 1
    assert out[3]["resets"] == 0 and out[3]["errors"]["reset"] == 0
    assert out[3]["errors"]["absent"] >= 100
    # Once the back-off has run out, one RESET pulse in case the chip hangs; then 2 s more.
    assert out[5] == {"absent": 2} and int(out[6]) - int(out[2]) == 1
    assert out[8]["error"] == "reset"  # it came up with reset defaults: initialised now
    assert out[9][0][2] == 460_000


def test_phase_calibration_fixes_a_low_pf_load(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    """20 W at PF 0.1 through a CT with a 7.17 deg lag reads -5 W; the installer's phase
    calibration (docs/installer.md, computed here as written there) brings it within 0.1 W,
    and the driver writes it again after a chip reset."""
    chip.set_load(0, power=20.0, pf=0.1)
    chip.channels[0].ct_phase_deg = CT_LAG_DEG
    out = run(fw, vboard, [["read"]])
    v_mv, i_ma, p_mw = out[0][0][:3]
    assert -5_100 <= p_mw <= -4_900  # uncalibrated
    # Installer: apparent power from `read` (V x A), the reference meter says 20.0 W.
    s = v_mv * i_ma / 1e6
    error = math.degrees(math.acos(p_mw / 1000 / s) - math.acos(20.0 / s))
    k = round(error / PHCAL_LSB_DEG_50HZ)
    assert 350 <= k <= 360
    out = run(fw, vboard, [["read"], ["host", "chip", "chip_reset"], ["read"], ["read"]],
              phcal=[k, 0], reset_pin=True)
    assert abs(out[0][0][2] - 20_000) <= 100  # within 0.1 W (0.5 %) of the reference
    assert chip.r16[emu.PHCALA] == k and chip.r16[emu.PHCALB] == 0
    assert out[2]["error"] == "reset"
    assert abs(out[3][0][2] - 20_000) <= 100  # PHCAL written again with the configuration
    assert abs(out[3][0][5] - 100) <= 2  # and the chip's own power factor is right too


def test_invert_makes_a_reversed_ct_read_positive(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    # CT on input A clamped the wrong way round: a 460 W load looks like export.
    chip.set_channel(0, current=2.0, power=-460.0, reactive=-80.0, apparent=470.0)
    chip.set_channel(1, current=1.0, power=230.0)
    out = run(fw, vboard, [["read"], ["host", "chip", "advance", "36"], ["read"], ["energy"]],
              invert=[True, False])
    a, b = out[0]
    assert a[1] == 2_000 and a[2] == 460_000 and a[3] == 80_000 and a[4] == 470_000
    assert a[5] == 979  # power factor positive too
    assert b[2] == 230_000  # the other input untouched
    assert out[2][0][7] in (4_599, 4_600)  # 36 s at 460 W: counted as consumption
    assert out[3][0] in (4_599, 4_600)


def test_board_map_and_settings_combine(
    fw: FirmwareRunner, vboard: VirtualBoard, chip: emu.ADE7953
) -> None:
    """The board entry wires B first and B reversed; the settings override the map and
    invert on top of the board's wiring. Calibration and energy stay with their channels."""
    chip.set_channel(0, current=1.0, power=230.0)  # input A
    chip.set_channel(1, current=4.0, power=-920.0)  # input B: the board's CT runs backwards
    meter = {"type": "ade7953", "spi": "ade", "map": "ba", "invert": ["b"]}
    cal = {"volts": 26_000.0, "amps": [200_000.0, 100_000.0], "watts": [154.0, 154.0],
           "wh": [23_688.0, 23_688.0]}  # by channel: channel 1 (input B) has its own CT
    source = {"meter": meter, "settings": {}, "restore": {"1": 5_000, "2": 7_000}}
    out = run(fw, vboard, [["source_read"], ["source_energy"], ["energy"], ["source_sample"]],
              calibration=cal, source=source)
    assert out[0] == {}  # no setting rejected
    ch1, ch2 = out[1]
    assert ch1[1] == 2_000 and ch1[2] == 920_000  # input B, with channel 1's calibration
    assert ch2[1] == 1_000 and ch2[2] == 230_000  # input A
    assert out[2] == {"1": 5_000, "2": 7_000} and out[3] == [7_000, 5_000]
    assert out[4] == [[920_000, 5], [230_000, 7]]  # the sampler's path: power, energy in Wh

    settings = {"ade_map": "ab", "ade_invert_a": "on", "ade_invert_b": "yes",
                "ade_phcal_b": "-12"}
    out = run(fw, vboard, [["source_read"]], source={"meter": meter, "settings": settings})
    assert out[0] == {}
    ch1, ch2 = out[1]
    assert ch1[2] == -230_000  # input A first, inverted by the installer
    assert abs(ch2[2] + 920_000) <= 100  # the installer's invert undoes the board's
    assert chip.r16[emu.PHCALB] == 0x200 | 12  # sign-magnitude

    bad = {"ade_map": "ac", "ade_phcal_a": "384", "ade_invert_a": "maybe"}
    out = run(fw, vboard, [["source_read"]], source={"meter": {"map": "ab"}, "settings": bad})
    assert sorted(out[0]) == ["ade_invert_a", "ade_map", "ade_phcal_a"]
    assert "-383..383" in out[0]["ade_phcal_a"]
    assert out[1][0][2] == 230_000  # defaults kept


def test_settings_reach_the_running_meter(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    meter = VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10,
                         ade_invert_b=True, ade_phcal_a=12)
    fw.run_json("app_run.py", meter.request(100), env=vboard.env())
    frames, errors = meter.frames()
    assert errors == [] and frames
    assert meter.ade is not None and meter.ade.r16[emu.PHCALA] == 12
    assert frames[0].channels[2].values["power"].mean == 200_000  # was -200 W
