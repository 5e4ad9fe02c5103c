"""ADE7953 driver: single-phase metering IC (one voltage, two current channels) over SPI.

Takes an already-built ``machine.SPI`` (mode and baud from the board file; the datasheet's
timing diagrams give mode 3, public drivers use 0, 2 or 3) and the chip-select ``Pin``,
optionally the RESET ``Pin``. Register names and addresses are the datasheet's (Rev. C
tables 13-25). A transaction is CS low, 16-bit address MSB first, command byte (0x80 read,
0x00 write), data MSB first, CS high.

Register types: measurements are read through the 32-bit views (0x3xx) of the 24-bit
registers, where "only the lower 24 bits contain valid data (the upper 8 bits are sign
extended)": the chip copies bit 23 into the top byte whatever the register's type. VRMS,
IRMSA and IRMSB are *unsigned* (Table 15), and an RMS reading reaches 2^23 counts well inside
the ADC's range (322.6 V or 83.9 A with the common calibration), so the driver decodes the
lower 24 bits of every 32-bit view by the register's own type, never the 32-bit word as a
whole. AWATT, AVAR, AVA (Table 15 lists apparent power as signed too) and the energies are
two's complement; PHCALA/PHCALB are sign-magnitude.

Scaling comes from per-device calibration (counts per V, A, W and Wh, set by the installer
console), never from constants here. Energy registers are read-with-reset (LCYCMODE bit 6
RSTREAD) and integrated into per-channel mWh totals that the application persists.
Per channel the installer can set the phase calibration (PHCALA/PHCALB, written at every
initialisation, so also after a chip reset) and invert the sign of the active and reactive
power, power factor and energy (a current transformer clamped the wrong way round).

Robustness. A chip that is missing or unpowered reads all zeros; a floating MISO line reads
all ones. Neither is a reset: CONFIG can hold neither 0x0000 (bit 15 COMM_LOCK reads 1 until
the port is locked, and the driver sets HPFEN) nor 0xFFFF (SWRST, bit 7, clears itself), so
either value means "absent" and the sample fails with kind "absent" at the cost of one
register read. Otherwise every read checks RSTIRQSTATA bit 20 (RESET, set at the end of any
reset) and CONFIG, and re-runs the init sequence after a silent reset, raising a
``DriverError`` of kind "reset" for that sample so the frame says so. Re-initialising costs
a RESET pulse and a 100 ms wait, so a failed initialisation is not repeated at once: the
next attempt waits 1 s, then 2, 4 ... 64 s (a chip that stays mute is reset on that
schedule, in case it hangs; one that starts answering again is initialised at once).
"""

import time

from micropython import const

from gemeter.drivers import KIND_ABSENT, KIND_RESET, DriverError

# 8-bit registers
_LCYCMODE = const(0x004)
_LCYCMODE_RSTREAD = const(0x40)
_UNLOCK_REGISTER = const(0x0FE)
_UNLOCK_KEY = const(0xAD)
_VERSION = const(0x702)
# 16-bit registers
_CONFIG = const(0x102)
_CONFIG_VALUE = const(0x0004)  # HPFEN on; COMM_LOCK (bit 15) = 0 locks the port to SPI
_PHCALA = const(0x108)  # PHCALB is 0x109
_PHCAL_MAX = const(383)  # datasheet range of the sign-magnitude phase calibration
_PHCAL_SIGN = const(0x200)  # bit 9 is the sign, bits 8-0 the magnitude
_PFA = const(0x10A)
_PFB = const(0x10B)
_PERIOD = const(0x10E)
_OPTIMUM_SETTINGS = const(0x120)
_OPTIMUM_VALUE = const(0x0030)  # required after every reset (datasheet, register 0x120)
# 32-bit views of 24-bit registers
_AVA = const(0x310)
_BVA = const(0x311)
_AWATT = const(0x312)
_BWATT = const(0x313)
_AVAR = const(0x314)
_BVAR = const(0x315)
_IRMSA = const(0x31A)
_IRMSB = const(0x31B)
_VRMS = const(0x31C)
_AENERGYA = const(0x31E)
_AENERGYB = const(0x31F)
_RSTIRQSTATA = const(0x32E)
_IRQ_RESET = const(0x100000)  # IRQSTATA bit 20: end of a software or hardware reset

_PERIOD_CLOCK_HZ = const(223750)  # f = 223750 / (PERIOD + 1)
_BACKOFF_FIRST_MS = const(1000)
_BACKOFF_MAX_MS = const(64000)

# Per channel: (IRMS, AWATT, AVAR, AVA, PF, AENERGY) register addresses.
_CHANNEL_REGS = (
    (_IRMSA, _AWATT, _AVAR, _AVA, _PFA, _AENERGYA),
    (_IRMSB, _BWATT, _BVAR, _BVA, _PFB, _AENERGYB),
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


def _s24(value):
    """Two's complement of a 24-bit register value."""
    return value - 0x1000000 if value & 0x800000 else value


def phcal_register(value):
    """PHCALA/PHCALB content for a phase calibration of value LSBs (sign-magnitude)."""
    if not -_PHCAL_MAX <= value <= _PHCAL_MAX:
        raise ValueError("phase calibration must be -383..383")
    return _PHCAL_SIGN | -value if value < 0 else value


def frequency_mhz(period):
    """Line frequency in mHz from PERIOD."""
    return (_PERIOD_CLOCK_HZ * 1000 + (period + 1) // 2) // (period + 1)


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
    """One channel's quantities as scaled integers (mV, mA, mW, mvar, mVA, 1/1000, mHz).

    The driver keeps one per channel and overwrites it at every read: use the values
    before the next read."""

    def __init__(self):
        self.voltage_mv = 0
        self.current_ma = 0
        self.power_mw = 0
        self.reactive_mvar = 0
        self.apparent_mva = 0
        self.pf_milli = 0
        self.frequency_mhz = 0
        self.energy_delta_mwh = 0


class ADE7953:
    def __init__(self, spi, cs, reset=None, calibration=None, phcal=(0, 0),
                 invert=(False, False)):
        self.spi = spi
        self.cs = cs
        self.reset_pin = reset
        self.calibration = calibration or DEFAULT_CALIBRATION
        self.phcal = (0, 0)
        self.set_phase_calibration(phcal[0], phcal[1], write=False)
        self.invert = (bool(invert[0]), bool(invert[1]))
        self._hdr = bytearray(3)
        self._buf = bytearray(4)
        self._out = [ChannelReading(), ChannelReading()]
        self.energy_mwh = [0, 0]  # totals; the application restores and persists them
        self._energy_residual = [0.0, 0.0]  # fractions of a mWh not yet counted
        self.resets = 0
        self.errors = {KIND_ABSENT: 0, KIND_RESET: 0}
        self._mute = False  # CONFIG read all zeros or all ones at the last look
        self._retry_at = None  # ticks_ms before which no (re-)initialisation is tried
        self._backoff_ms = 0
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
        """The register's value, unsigned. For a 32-bit view (0x3xx) that is its lower 24
        bits: the top byte is only bit 23 repeated (see the module docstring)."""
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
        return (buf[n - 3] << 16) | (buf[n - 2] << 8) | buf[n - 1]  # small ints: no heap

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
        A failed attempt sets the back-off before the next one (see check()).
        """
        if warm and self._read(_CONFIG) == _CONFIG_VALUE:
            pass
        elif self.reset_pin is not None:
            self.reset_pin.value(0)
            time.sleep_us(20)  # datasheet: RESET low for at least 10 us
            self.reset_pin.value(1)
            time.sleep_ms(100)  # then wait for the chip to come up
        self._write(_CONFIG, _CONFIG_VALUE)
        self._write(_UNLOCK_REGISTER, _UNLOCK_KEY)  # must come immediately before 0x120
        self._write(_OPTIMUM_SETTINGS, _OPTIMUM_VALUE)
        self._write(_LCYCMODE, _LCYCMODE_RSTREAD)
        self._write_phcal()
        config = self._read(_CONFIG)
        if config != _CONFIG_VALUE:
            self._mute = config == 0 or config == 0xFFFF
            b = self._backoff_ms
            self._backoff_ms = _BACKOFF_FIRST_MS if b == 0 else min(2 * b, _BACKOFF_MAX_MS)
            self._retry_at = time.ticks_add(time.ticks_ms(), self._backoff_ms)
            self.errors[KIND_ABSENT] += 1
            raise DriverError(KIND_ABSENT, "ADE7953 does not answer (CONFIG read-back)")
        self._mute = False
        self._retry_at = None
        self._backoff_ms = 0
        self._read(_RSTIRQSTATA)  # clear the RESET flag of this start

    def _write_phcal(self):
        self._write(_PHCALA, phcal_register(self.phcal[0]))
        self._write(_PHCALA + 1, phcal_register(self.phcal[1]))  # PHCALB

    def set_phase_calibration(self, a, b, write=True):
        """PHCALA/PHCALB in LSBs (-383..383); kept and written again after every reset."""
        phcal_register(a)  # range check before anything changes
        phcal_register(b)
        self.phcal = (a, b)
        if write:
            self._write_phcal()

    def version(self):
        return self._read(_VERSION)

    def restore_energy(self, mwh_a, mwh_b):
        self.energy_mwh = [mwh_a, mwh_b]

    # -- measurements ---------------------------------------------------------
    def check(self):
        """Detect a silent reset or a vanished chip; re-initialise after a reset."""
        config = self._read(_CONFIG)
        mute = config == 0 or config == 0xFFFF  # zeros: no chip; ones: MISO floating
        if self._mute and not mute:
            self._retry_at = None  # it answers again: initialise it now, not after back-off
        self._mute = mute
        if not mute and config == _CONFIG_VALUE and not self._read(_RSTIRQSTATA) & _IRQ_RESET:
            return
        if self._retry_at is not None and time.ticks_diff(self._retry_at, time.ticks_ms()) > 0:
            self.errors[KIND_ABSENT] += 1
            raise DriverError(KIND_ABSENT, "ADE7953 does not answer" if mute else
                              "ADE7953 does not keep its configuration")
        if mute:  # try a reset in case it hangs; raises absent (and backs off) if it does not help
            self.init(warm=False)
            self.errors[KIND_RESET] += 1
            raise DriverError(KIND_RESET, "ADE7953 answers again; configuration restored")
        self.resets += 1
        self.errors[KIND_RESET] += 1
        self.init(warm=False)
        raise DriverError(KIND_RESET, "ADE7953 was reset; configuration restored")

    def raw_counts(self, ch, samples=8):
        """Mean raw (VRMS, IRMS, AWATT) counts of channel ch (0 = A) for calibration."""
        self.check()
        irms, watt = _CHANNEL_REGS[ch][0], _CHANNEL_REGS[ch][1]
        sign = -1 if self.invert[ch] else 1
        v = i = p = 0
        for _ in range(samples):
            v += self._read(_VRMS)
            i += self._read(irms)
            p += _s24(self._read(watt))
            time.sleep_ms(10)
        return (v // samples, i // samples, sign * p // samples)

    def read(self):
        """Both channels: two ChannelReading (overwritten by the next read). Raises
        DriverError."""
        self.check()
        cal = self.calibration
        voltage = scaled(self._read(_VRMS), cal["volts"])
        freq = frequency_mhz(self._read(_PERIOD))
        for ch in (0, 1):
            irms, watt, var, va, pf, energy = _CHANNEL_REGS[ch]
            per_w = cal["watts"][ch]
            sign = -1 if self.invert[ch] else 1
            counts = sign * _s24(self._read(energy))
            self._energy_residual[ch] += counts * 1000 / cal["wh"][ch]
            delta = int(self._energy_residual[ch])
            self._energy_residual[ch] -= delta
            self.energy_mwh[ch] += delta
            r = self._out[ch]
            r.voltage_mv = voltage
            r.current_ma = scaled(self._read(irms), cal["amps"][ch])  # unsigned
            r.power_mw = scaled(sign * _s24(self._read(watt)), per_w)
            r.reactive_mvar = scaled(sign * _s24(self._read(var)), per_w)
            r.apparent_mva = scaled(_s24(self._read(va)), per_w)
            r.pf_milli = sign * pf_milli(self._read(pf))
            r.frequency_mhz = freq
            r.energy_delta_mwh = delta
        return self._out
