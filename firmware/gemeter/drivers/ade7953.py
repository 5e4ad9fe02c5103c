"""ADE7953 driver: single-phase metering IC (one voltage, two current channels) over SPI.

Takes an already-built ``machine.SPI`` (mode and baud from the board file; the datasheet's
timing diagrams give mode 3, public drivers use 0, 2 or 3) and the chip-select ``Pin``,
optionally the RESET ``Pin``. Register names and addresses are the datasheet's (Rev. C
tables 13-25). A transaction is CS low, 16-bit address MSB first, command byte (0x80 read,
0x00 write), data MSB first, CS high. Measurements are read through the 32-bit views
(0x3xx) of the 24-bit registers, which the chip sign-extends.

Scaling comes from per-device calibration (counts per V, A, W and Wh, set by the installer
console), never from constants here. Energy registers are read-with-reset (LCYCMODE bit 6
RSTREAD) and integrated into per-channel mWh totals that the application persists.

Robustness: after init the driver checks that CONFIG reads back what it wrote (an absent or
unpowered chip reads zeros); every read checks RSTIRQSTATA bit 20 (RESET, set at the end of
any reset) and CONFIG, and re-runs the init sequence after a silent reset, raising a
``DriverError`` of kind "reset" for that sample so the frame says so.
"""

import struct
import time

from micropython import const

from gemeter.drivers import KIND_ABSENT, KIND_RESET, DriverError

# 8-bit registers
LCYCMODE = const(0x004)
LCYCMODE_RSTREAD = const(0x40)
UNLOCK_REGISTER = const(0x0FE)
UNLOCK_KEY = const(0xAD)
VERSION = const(0x702)
# 16-bit registers
CONFIG = const(0x102)
CONFIG_VALUE = const(0x0004)  # HPFEN on; COMM_LOCK (bit 15) = 0 locks the port to SPI
PFA = const(0x10A)
PFB = const(0x10B)
PERIOD = const(0x10E)
OPTIMUM_SETTINGS = const(0x120)
OPTIMUM_VALUE = const(0x0030)  # required after every reset (datasheet, register 0x120)
# 32-bit views of 24-bit registers
AVA = const(0x310)
BVA = const(0x311)
AWATT = const(0x312)
BWATT = const(0x313)
AVAR = const(0x314)
BVAR = const(0x315)
IRMSA = const(0x31A)
IRMSB = const(0x31B)
VRMS = const(0x31C)
AENERGYA = const(0x31E)
AENERGYB = const(0x31F)
RSTIRQSTATA = const(0x32E)
IRQ_RESET = const(0x100000)  # IRQSTATA bit 20: end of a software or hardware reset

PERIOD_CLOCK_HZ = const(223750)  # f = 223750 / (PERIOD + 1)

# Per channel: (IRMS, AWATT, AVAR, AVA, PF, AENERGY) register addresses.
_CHANNEL_REGS = (
    (IRMSA, AWATT, AVAR, AVA, PFA, AENERGYA),
    (IRMSB, BWATT, BVAR, BVA, PFB, AENERGYB),
)

DEFAULT_CALIBRATION = {
    "volts": 26000.0,  # VRMS counts per V
    "amps": (100000.0, 100000.0),  # IRMS counts per A, channels A and B
    "watts": (154.0, 154.0),  # AWATT/AVAR/AVA counts per W, var, VA
    "wh": (23688.0, 23688.0),  # AENERGY counts per Wh
}


def _width(addr):
    # Datasheet: 0x0xx/0x7xx/0x8xx 8-bit, 0x1xx 16-bit, 0x2xx 24-bit, 0x3xx 32-bit view.
    hi = addr >> 8
    if hi == 1:
        return 2
    if hi == 2:
        return 3
    if hi == 3:
        return 4
    return 1


def frequency_mhz(period):
    """Line frequency in mHz from PERIOD."""
    return (PERIOD_CLOCK_HZ * 1000 + (period + 1) // 2) // (period + 1)


def pf_milli(raw16):
    """Power factor x 1000 from PFA/PFB (signed 16-bit, value x 2^-15)."""
    neg = raw16 & 0x8000
    mag = 0x10000 - raw16 if neg else raw16
    v = (mag * 1000 + 16384) // 32768  # round half away from zero, symmetric in sign
    return -v if neg else v


def scaled(raw, counts_per_unit, factor=1000):
    """raw counts -> integer milli-units, rounded to nearest."""
    v = raw * factor / counts_per_unit
    return int(v + 0.5) if v >= 0 else -int(-v + 0.5)


class ChannelReading:
    """One channel's quantities as scaled integers (mV, mA, mW, mvar, mVA, 1/1000, mHz)."""

    def __init__(self, voltage_mv, current_ma, power_mw, reactive_mvar, apparent_mva,
                 pf_milli, frequency_mhz, energy_delta_mwh):
        self.voltage_mv = voltage_mv
        self.current_ma = current_ma
        self.power_mw = power_mw
        self.reactive_mvar = reactive_mvar
        self.apparent_mva = apparent_mva
        self.pf_milli = pf_milli
        self.frequency_mhz = frequency_mhz
        self.energy_delta_mwh = energy_delta_mwh


class ADE7953:
    def __init__(self, spi, cs, reset=None, calibration=None):
        self.spi = spi
        self.cs = cs
        self.reset_pin = reset
        self.calibration = calibration or DEFAULT_CALIBRATION
        self._hdr = bytearray(3)
        self._buf = bytearray(4)
        self.energy_mwh = [0, 0]  # totals; the application restores and persists them
        self._energy_residual = [0.0, 0.0]  # fractions of a mWh not yet counted
        self.resets = 0
        self.errors = {KIND_ABSENT: 0, KIND_RESET: 0}
        cs.value(1)
        try:
            self.init()
        except DriverError:
            pass  # absent for now: read() keeps checking and initialises when it answers

    # -- bus traffic ----------------------------------------------------------
    def _header(self, addr, command):
        # Fill the 3-byte header; returns the data buffer sized by the register's width.
        hdr = self._hdr
        hdr[0] = addr >> 8
        hdr[1] = addr & 0xFF
        hdr[2] = command
        return memoryview(self._buf)[: _width(addr)]

    def _read(self, addr):
        buf = self._header(addr, 0x80)
        n = len(buf)
        self.cs.value(0)
        try:
            self.spi.write(self._hdr)
            self.spi.readinto(buf)
        finally:
            self.cs.value(1)
        if n == 1:
            return buf[0]
        if n == 2:
            return (buf[0] << 8) | buf[1]
        if n == 3:
            return (buf[0] << 16) | (buf[1] << 8) | buf[2]
        return struct.unpack(">i", buf)[0]  # 32-bit views are sign-extended by the chip

    def _write(self, addr, value):
        buf = self._header(addr, 0x00)
        n = len(buf)
        for i in range(n):
            buf[i] = (value >> (8 * (n - 1 - i))) & 0xFF
        self.cs.value(0)
        try:
            self.spi.write(self._hdr)
            self.spi.write(buf)
        finally:
            self.cs.value(1)

    # -- set-up ---------------------------------------------------------------
    def init(self, warm=True):
        """Reset (if wired) and configure; raises DriverError(absent) if the chip is mute.

        A chip that still holds our configuration (the MCU rebooted, the chip kept power) is
        not reset: its energy accumulators hold what was used since the last read, and the
        first read counts it. A fresh or reset chip is reset through RESET when wired.
        """
        if warm and self._read(CONFIG) == CONFIG_VALUE:
            pass
        elif self.reset_pin is not None:
            self.reset_pin.value(0)
            time.sleep_us(20)  # datasheet: RESET low for at least 10 us
            self.reset_pin.value(1)
            time.sleep_ms(100)  # then wait for the chip to come up
        self._write(CONFIG, CONFIG_VALUE)
        self._write(UNLOCK_REGISTER, UNLOCK_KEY)  # must come immediately before 0x120
        self._write(OPTIMUM_SETTINGS, OPTIMUM_VALUE)
        self._write(LCYCMODE, LCYCMODE_RSTREAD)
        if self._read(CONFIG) != CONFIG_VALUE:
            self.errors[KIND_ABSENT] += 1
            raise DriverError(KIND_ABSENT, "ADE7953 does not answer (CONFIG read-back)")
        self._read(RSTIRQSTATA)  # clear the RESET flag of this start

    def version(self):
        return self._read(VERSION)

    def restore_energy(self, mwh_a, mwh_b):
        self.energy_mwh = [mwh_a, mwh_b]

    # -- measurements ---------------------------------------------------------
    def check(self):
        """Detect a silent reset or a vanished chip; re-initialise after a reset."""
        irq = self._read(RSTIRQSTATA)
        config = self._read(CONFIG)
        if config == CONFIG_VALUE and not irq & IRQ_RESET:
            return
        if config in (0, 0xFFFF) and not irq & IRQ_RESET:
            self.errors[KIND_ABSENT] += 1
            raise DriverError(KIND_ABSENT, "ADE7953 does not answer")
        self.resets += 1
        self.errors[KIND_RESET] += 1
        self.init(warm=False)
        raise DriverError(KIND_RESET, "ADE7953 was reset; configuration restored")

    def raw_counts(self, ch, samples=8):
        """Mean raw (VRMS, IRMS, AWATT) counts of channel ch (0 = A) for calibration."""
        self.check()
        irms, watt = _CHANNEL_REGS[ch][0], _CHANNEL_REGS[ch][1]
        v = i = p = 0
        for _ in range(samples):
            v += self._read(VRMS)
            i += self._read(irms)
            p += self._read(watt)
            time.sleep_ms(10)
        return (v // samples, i // samples, p // samples)

    def read(self):
        """Both channels: a tuple of two ChannelReading. Raises DriverError."""
        self.check()
        cal = self.calibration
        voltage = scaled(self._read(VRMS), cal["volts"])
        freq = frequency_mhz(self._read(PERIOD))
        out = []
        for ch in (0, 1):
            irms, watt, var, va, pf, energy = _CHANNEL_REGS[ch]
            per_w = cal["watts"][ch]
            counts = self._read(energy)
            self._energy_residual[ch] += counts * 1000 / cal["wh"][ch]
            delta = int(self._energy_residual[ch])
            self._energy_residual[ch] -= delta
            self.energy_mwh[ch] += delta
            out.append(ChannelReading(
                voltage,
                scaled(self._read(irms), cal["amps"][ch]),
                scaled(self._read(watt), per_w),
                scaled(self._read(var), per_w),
                scaled(self._read(va), per_w),
                pf_milli(self._read(pf)),
                freq,
                delta,
            ))
        return out
