"""ADE7953 emulator: the register file and SPI protocol of the single-phase metering IC.

Facts followed (ADE7953 datasheet Rev. C register tables, cross-checked with public
drivers; ../shared/reference/ade7953.md):

- SPI: CS low, 16-bit register address MSB first, a command byte (0x80 read, 0x00 write),
  then data MSB first; CS high ends the transaction (a write takes effect then).
- Width follows the address: 0x0xx 8-bit, 0x1xx 16-bit, 0x2xx 24-bit, 0x3xx the 32-bit
  view of the same 24-bit registers, 0x7xx 8-bit. In the 32-bit view "only the lower 24 bits
  contain valid data (the upper 8 bits are sign extended)" (register section): the chip
  copies bit 23 into the top byte of *every* 24-bit register, also of the unsigned ones
  (Table 15: IRMSA, IRMSB, VRMS, the IRQ and gain registers are unsigned; AWATT, AVAR, AVA
  and the energies are signed). So an RMS reading of 2^23 counts or more comes out of the
  32-bit view with 0xFF on top; only the lower 24 bits, taken unsigned, are the value.
- Reset defaults: CONFIG (0x102) 0x8004 (bit 15 COMM_LOCK=1 means *not* locked, bit 2
  HPFEN, bit 7 SWRST resets the chip), LCYCMODE (0x004) 0x40 (bit 6 RSTREAD: energy
  registers clear on read), gains 0x400000, IRQENA 0x100000, CRC (0x37F) 0xFFFFFFFF.
- IRQSTATA bit 20 RESET is set at the end of every reset; RSTIRQSTATA (0x22E/0x32E) reads
  IRQSTATA and clears it.
- The "optimum settings" register 0x120 must be set to 0x0030 after every reset, unlocked
  by writing 0xAD to 0x0FE immediately before. Until then this emulator reads 1 % high,
  so a driver that forgets it fails its tests.
- PERIOD (0x10E): line period, f = 223750 / (PERIOD + 1) Hz. PFA/PFB (0x10A/0x10B):
  signed, PF = value x 2^-15.
- VERSION (0x702) is the silicon revision; no public source gives the value real parts
  return, so this emulator answers 0x01.
- PHCALA/PHCALB (0x108/0x109): phase calibration, sign-magnitude (the only registers that
  are not two's complement), at most +-383. This emulator takes bit 9 as the sign and bits
  8-0 as the magnitude, one LSB as 4 / CLKIN (CLKIN 3.579545 MHz: 1.117 us, 0.0201 deg at
  50 Hz), and a positive value as advancing the current channel, i.e. correcting a sensor
  that delays the current. Those three facts are this model's assumptions (the register
  table gives only the format and range): the installer procedure derives the value from a
  measurement and checks its sign by reading again, so it holds either way.

Not on the chip's pins but in front of them: a current transformer shifts the phase of
the current it carries (``Channel.ct_phase_deg``, positive = the current arrives late).
The chip then computes active and reactive power at the wrong angle: at a low power factor
a small shift moves the active power a lot (20 W at PF 0.1 with 7.2 deg: -5 W).

A missing chip, or one whose MISO line floats, is modelled by ``present=False``: every byte
it shifts out is ``absent_byte`` (0x00: MISO pulled low or the chip unpowered; 0xFF: a
floating MISO with a pull-up, the classic "all ones").

The analog front end (shunt, divider) is a per-board constant set here in counts per unit;
a driver must take those numbers from calibration, never from its own code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONFIG = 0x102
CONFIG_DEFAULT = 0x8004
CONFIG_SWRST = 0x0080
LCYCMODE = 0x004
LCYCMODE_RSTREAD = 0x40
UNLOCK = 0x0FE
UNLOCK_KEY = 0xAD
OPTIMUM = 0x120
OPTIMUM_VALUE = 0x0030
VERSION = 0x702
VERSION_VALUE = 0x01
PERIOD = 0x10E
PFA, PFB = 0x10A, 0x10B
PHCALA, PHCALB = 0x108, 0x109
PHCAL_MAX = 383
PHCAL_SIGN = 0x200  # bit 9; bits 8-0 are the magnitude
CLKIN_HZ = 3_579_545
PHCAL_LSB_S = 4 / CLKIN_HZ
IRQ_RESET = 1 << 20
GAIN_DEFAULT = 0x400000
CLOCK_HZ = 223_750

# 24-bit registers by their low byte (0x2xx and 0x3xx address the same storage).
AVA, BVA, AWATT, BWATT, AVAR, BVAR = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
IRMSA, IRMSB, VRMS = 0x1A, 0x1B, 0x1C
AENERGYA, AENERGYB = 0x1E, 0x1F
IRQENA, IRQSTATA, RSTIRQSTATA = 0x2C, 0x2D, 0x2E
AP_NOLOAD = 0x03
CRC = 0x7F
AIGAIN, AVGAIN, AWGAIN, AVARGAIN, AVAGAIN = 0x80, 0x81, 0x82, 0x83, 0x84
BIGAIN, BVGAIN, BWGAIN, BVARGAIN, BVAGAIN = 0x8C, 0x8D, 0x8E, 0x8F, 0x90
UNSIGNED_LIVE = (IRMSA, IRMSB, VRMS)  # Table 15 "Unsigned"; the other live values are signed


@dataclass
class FrontEnd:
    """Counts per physical unit produced by a board's analog front end (Shelly-like)."""

    volts: float = 26_000.0  # VRMS counts per V
    amps: float = 100_000.0  # IRMS counts per A
    watts: float = 154.0  # AWATT/AVAR/AVA counts per W/var/VA
    wh: float = 23_688.0  # AENERGY counts per Wh (6.58 counts per W.s)


@dataclass
class Channel:
    current: float = 0.0  # A
    power: float = 0.0  # W, negative = export
    reactive: float = 0.0  # var
    apparent: float = 0.0  # VA
    pf: float = 1.0
    energy_counts: float = 0.0  # accumulator, counts
    ct_phase_deg: float = 0.0  # the sensor delays the current by this angle (deg)


def _s24(value: int) -> int:
    return max(-(1 << 23), min((1 << 23) - 1, value))


def _u24(value: int) -> int:
    return max(0, min((1 << 24) - 1, value))


def sign_magnitude(value: int) -> int:
    """PHCALx encoding of a whole number of LSBs (-383..383)."""
    if not -PHCAL_MAX <= value <= PHCAL_MAX:
        raise ValueError(f"PHCAL must be -{PHCAL_MAX}..{PHCAL_MAX}")
    return PHCAL_SIGN | -value if value < 0 else value


@dataclass
class ADE7953:
    front_end: FrontEnd = field(default_factory=FrontEnd)
    present: bool = True
    absent_byte: int = 0x00  # what MISO reads while not present (0xFF: floating, pulled up)

    def __post_init__(self) -> None:
        self.voltage = 230.0
        self.frequency = 50.0
        self.channels = (Channel(), Channel())
        self.resets = 0
        self.transactions = 0
        self._reset_registers()
        self._tx = bytearray()
        self._selected = False

    # -- physical side --------------------------------------------------------
    def set_channel(
        self, ch: int, current: float, power: float, reactive: float = 0.0,
        apparent: float | None = None, pf: float | None = None,
    ) -> None:
        c = self.channels[ch]
        c.current, c.power, c.reactive = current, power, reactive
        c.apparent = abs(power) if apparent is None else apparent
        c.pf = (power / c.apparent if c.apparent else 1.0) if pf is None else pf

    def set_load(self, ch: int, power: float, pf: float, capacitive: bool = False) -> None:
        """A physically consistent load: active power (W, negative = export) at a power
        factor; apparent and reactive power and the current follow from the line voltage."""
        apparent = abs(power) / pf if pf else 0.0
        reactive = math.sqrt(max(0.0, apparent**2 - power**2)) * (-1 if capacitive else 1)
        self.set_channel(ch, current=apparent / self.voltage if self.voltage else 0.0,
                         power=power, reactive=reactive, apparent=apparent,
                         pf=math.copysign(pf, power) if power else pf)

    def phcal_deg(self, ch: int) -> float:
        """The phase correction PHCALA/PHCALB (by channel) applies now, in degrees."""
        raw = self.r16.get(PHCALA + ch, 0)
        lsb = min(raw & (PHCAL_SIGN - 1), PHCAL_MAX)
        lsb = -lsb if raw & PHCAL_SIGN else lsb
        return lsb * PHCAL_LSB_S * self.frequency * 360

    def measured(self, ch: int) -> tuple[float, float, float]:
        """(active W, reactive var, power factor) as the chip computes them: at the angle
        the sensor's phase shift leaves after PHCAL's correction."""
        c = self.channels[ch]
        shift = c.ct_phase_deg - self.phcal_deg(ch)
        if not shift:
            return c.power, c.reactive, c.pf
        d = math.radians(shift)  # the current lags by `shift` more than it does
        p = c.power * math.cos(d) - c.reactive * math.sin(d)
        q = c.reactive * math.cos(d) + c.power * math.sin(d)
        return p, q, (p / c.apparent if c.apparent else c.pf)

    def advance(self, seconds: float) -> None:
        """Let time pass: the energy accumulators integrate the active power measured."""
        for ch, c in enumerate(self.channels):
            c.energy_counts += self.measured(ch)[0] * seconds / 3600 * self.front_end.wh

    def chip_reset(self) -> None:
        """Power glitch or brown-out: every register back to its default, RESET flagged."""
        self._reset_registers()
        self.resets += 1

    def _reset_registers(self) -> None:
        self.r8: dict[int, int] = {LCYCMODE: LCYCMODE_RSTREAD, UNLOCK: 0, VERSION: VERSION_VALUE,
                                   0x007: 0, 0x008: 0, 0x009: 0}
        self.r16: dict[int, int] = {CONFIG: CONFIG_DEFAULT, OPTIMUM: 0}
        self.r24: dict[int, int] = {g: GAIN_DEFAULT for g in (
            AIGAIN, AVGAIN, AWGAIN, AVARGAIN, AVAGAIN, BIGAIN, BVGAIN, BWGAIN, BVARGAIN, BVAGAIN)}
        self.r24.update({IRQENA: IRQ_RESET, IRQSTATA: IRQ_RESET, AP_NOLOAD: 0x00E419})
        self.unlocked_next = False
        for c in self.channels if hasattr(self, "channels") else ():
            c.energy_counts = 0.0

    @property
    def optimum_settings(self) -> bool:
        return self.r16.get(OPTIMUM) == OPTIMUM_VALUE

    # -- register values ------------------------------------------------------
    def _error(self) -> float:
        return 1.0 if self.optimum_settings else 1.01

    def _gain(self, reg: int) -> float:
        return self.r24[reg] / GAIN_DEFAULT

    def read_register(self, addr: int) -> tuple[int, int]:
        """(value, width in bytes) as the chip would shift it out."""
        hi = addr >> 8
        if hi in (0x0, 0x7, 0x8):
            return self.r8.get(addr, 0), 1
        if hi == 0x1:
            return self._read16(addr), 2
        if addr == 0x300 | CRC:  # a 32-bit register of its own: the CRC is off by default
            return 0xFFFFFFFF, 4
        if hi in (0x2, 0x3):
            value = self._read24(addr & 0xFF) & 0xFFFFFF
            if hi == 0x2:
                return value, 3
            # 32-bit view: bit 23 copied into the upper byte, whatever the register's type
            return (value | 0xFF000000 if value & 0x800000 else value), 4
        return 0, 1

    def _read16(self, addr: int) -> int:
        if addr == PERIOD:
            return max(0, min(0xFFFF, round(CLOCK_HZ / self.frequency) - 1))
        if addr in (PFA, PFB):
            pf = self.measured(addr - PFA)[2]
            return max(-32768, min(32767, round(pf * 32768))) & 0xFFFF
        return self.r16.get(addr, 0)

    def _read24(self, reg: int) -> int:
        fe, err = self.front_end, self._error()
        a, b = self.channels
        (pa, qa, _), (pb, qb, _) = self.measured(0), self.measured(1)
        live = {
            VRMS: self.voltage * fe.volts * self._gain(AVGAIN),
            IRMSA: a.current * fe.amps * self._gain(AIGAIN),
            IRMSB: b.current * fe.amps * self._gain(BIGAIN),
            AWATT: pa * fe.watts * self._gain(AWGAIN),
            BWATT: pb * fe.watts * self._gain(BWGAIN),
            AVAR: qa * fe.watts * self._gain(AVARGAIN),
            BVAR: qb * fe.watts * self._gain(BVARGAIN),
            AVA: a.apparent * fe.watts * self._gain(AVAGAIN),
            BVA: b.apparent * fe.watts * self._gain(BVAGAIN),
        }
        if reg in live:
            value = round(live[reg] * err)
            return _u24(value) if reg in UNSIGNED_LIVE else _s24(value)
        if reg in (AENERGYA, AENERGYB):
            c = self.channels[reg - AENERGYA]
            whole = int(c.energy_counts)
            if self.r8[LCYCMODE] & LCYCMODE_RSTREAD:
                c.energy_counts -= whole
            return _s24(round(whole * err))
        if reg == RSTIRQSTATA:
            value = self.r24.get(IRQSTATA, 0)
            self.r24[IRQSTATA] = 0
            return value
        return self.r24.get(reg, 0) & 0xFFFFFF

    def write_register(self, addr: int, data: bytes) -> None:
        hi = addr >> 8
        value = int.from_bytes(data, "big")
        if hi in (0x0, 0x7, 0x8) and len(data) == 1:
            self.r8[addr] = value
            if addr == UNLOCK:
                self.unlocked_next = value == UNLOCK_KEY
        elif hi == 0x1 and len(data) == 2:
            if addr == OPTIMUM:
                if self.unlocked_next:  # only right after the 0xAD unlock
                    self.r16[OPTIMUM] = value
                self.unlocked_next = False
                return
            if addr == CONFIG and value & CONFIG_SWRST:
                self.chip_reset()
                return
            self.r16[addr] = value
        elif hi in (0x2, 0x3) and len(data) == (3 if hi == 0x2 else 4):
            self.r24[addr & 0xFF] = value & 0xFFFFFF
        self.unlocked_next = self.unlocked_next and addr == UNLOCK

    # -- SPI side -------------------------------------------------------------
    def select(self) -> None:
        self._selected = True
        self._tx = bytearray()
        self._out = b""

    def deselect(self) -> None:
        if self._selected and self.present and len(self._tx) > 3 and self._tx[2] == 0x00:
            self.write_register((self._tx[0] << 8) | self._tx[1], bytes(self._tx[3:]))
        self._selected = False
        self.transactions += 1

    def transfer(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            pos = len(self._tx)
            self._tx.append(b)
            if pos == 2 and b == 0x80:  # header complete, read: prepare the shift register
                value, width = self.read_register((self._tx[0] << 8) | self._tx[1])
                self._out = value.to_bytes(width, "big")
            if pos >= 3 and self._tx[2] == 0x80 and pos - 3 < len(self._out):
                out.append(self._out[pos - 3])
            else:
                out.append(0)
        return bytes(out) if self.present else bytes([self.absent_byte]) * len(data)
