"""Per-channel aggregation over one reporting period, and the channel's map in the frame.

Samples of V, I, P, Q and S are summed with their min and max; power factor, frequency and
the energy register keep their last value; the energy delta is summed; errors are counted
by kind and become status bits. A period without one good sample yields an *invalid*
channel: status ST_INVALID and no measurement keys at all (never a stale value). A period
with some failed samples is ST_PARTIAL, aggregated over the good ones. No allocation per
sample: all state lives in lists made once. ``cbor_into`` writes the period's channel map
straight into the frame's payload (frame.py writes the rest), then starts the next
period: a report builds no dict or list per channel. Pure logic, no I/O.

The channel map (docs/protocol.md): keys in numeric order, a measurement is an int or
[mean, min, max] over the period.
"""

from micropython import const

from gemeter.drivers import KIND_ABSENT, KIND_CRC, KIND_RESET, KIND_TIMEOUT
from gemeter.frame import head, put_int

# Channel map keys.
_C_INDEX = const(0)
_C_STATUS = const(1)
_C_VOLTAGE = const(2)  # mV; then C_CURRENT mA, C_POWER mW (negative = export), C_REACTIVE
# mvar, C_APPARENT mVA: keys 2..6, in the order of ChannelAggregate's five sums
_C_PF = const(7)  # power factor x 1000, -1000..1000
_C_FREQ = const(8)  # mHz
_C_ENERGY = const(9)  # active energy register, Wh
_C_ENERGY_DELTA = const(10)  # active energy over the period, mWh
_C_SAMPLES = const(11)  # good samples aggregated into this period
_C_ERRORS = const(12)  # failed reads in this period

# Channel status bits.
_ST_INVALID = const(0x01)  # no trustworthy reading: measurement keys are absent
_ST_CRC = const(0x02)  # CRC errors on the bus in this period
_ST_TIMEOUT = const(0x04)  # the IC did not answer in this period
_ST_CHIP_RESET = const(0x08)  # IC reset detected and re-initialised
ST_UNCALIBRATED = const(0x10)  # scaling uses defaults, not a calibration (set by the start)
_ST_IC_ALARM = const(0x20)  # the IC's own alarm output is active
_ST_PARTIAL = const(0x40)  # some samples of the period failed

_STATUS_OF_KIND = {
    KIND_CRC: _ST_CRC,
    KIND_TIMEOUT: _ST_TIMEOUT,
    KIND_ABSENT: _ST_TIMEOUT,
    KIND_RESET: _ST_CHIP_RESET,
}


class ChannelAggregate:
    def __init__(self, index):
        self.index = index
        self.sums = [0, 0, 0, 0, 0]
        self.mins = [0, 0, 0, 0, 0]
        self.maxs = [0, 0, 0, 0, 0]
        self.present = [False, False, False, False, False]
        self.flags = 0  # status bits that hold for the whole channel (e.g. uncalibrated)
        self.reset()

    def reset(self):
        self.count = 0
        self.errors = 0
        self.status = 0
        self.pf = None
        self.freq = None
        self.energy = None
        self.delta = 0
        for i in range(5):
            self.present[i] = False

    def add(self, r, energy_wh=None, delta_mwh=0, alarm=False):
        """One good sample: a driver's reading ``r`` (drivers/__init__.py), read in place:
        no tuple is built per sample."""
        first = self.count == 0
        self._put(0, r.voltage_mv, first)
        self._put(1, r.current_ma, first)
        self._put(2, r.power_mw, first)
        self._put(3, r.reactive_mvar, first)
        self._put(4, r.apparent_mva, first)
        self.count += 1
        if r.pf_milli is not None:
            self.pf = r.pf_milli
        if r.frequency_mhz is not None:
            self.freq = r.frequency_mhz
        if energy_wh is not None:
            self.energy = energy_wh
        self.delta += delta_mwh
        if alarm:
            self.status |= _ST_IC_ALARM

    def _put(self, i, v, first):
        if v is None:
            return
        if first or not self.present[i]:
            self.sums[i] = v
            self.mins[i] = v
            self.maxs[i] = v
            self.present[i] = True
        else:
            self.sums[i] += v
            if v < self.mins[i]:
                self.mins[i] = v
            if v > self.maxs[i]:
                self.maxs[i] = v

    def fail(self, kind):
        """One failed sample (a DriverError kind)."""
        self.errors += 1
        self.status |= _STATUS_OF_KIND.get(kind, _ST_TIMEOUT)

    def mark(self, status_bits):
        self.status |= status_bits

    def mark_kind(self, kind):
        """A driver condition (a DriverError kind) for the period, without a failed sample."""
        self.status |= _STATUS_OF_KIND.get(kind, _ST_TIMEOUT)

    def cbor_into(self, buf):
        """Append the period's channel map to the bytearray buf, then start the next
        period."""
        status = self.status | self.flags
        n = self.count
        if n == 0:
            head(buf, 5, 4)
            buf.append(_C_INDEX)
            put_int(buf, self.index)
            buf.append(_C_STATUS)
            put_int(buf, status | _ST_INVALID)
        else:
            if self.errors:
                status |= _ST_PARTIAL
            present = self.present
            keys = 5 + (self.pf is not None) + (self.freq is not None) + \
                (self.energy is not None)
            for i in range(5):
                if present[i]:
                    keys += 1
            head(buf, 5, keys)
            buf.append(_C_INDEX)
            put_int(buf, self.index)
            buf.append(_C_STATUS)
            put_int(buf, status)
            for i in range(5):
                if present[i]:
                    s = self.sums[i]
                    buf.append(_C_VOLTAGE + i)
                    buf.append(0x83)  # [mean, min, max]
                    put_int(buf, (s + n // 2) // n if s >= 0 else -((-s + n // 2) // n))
                    put_int(buf, self.mins[i])
                    put_int(buf, self.maxs[i])
            if self.pf is not None:
                buf.append(_C_PF)
                put_int(buf, self.pf)
            if self.freq is not None:
                buf.append(_C_FREQ)
                put_int(buf, self.freq)
            if self.energy is not None:
                buf.append(_C_ENERGY)
                put_int(buf, self.energy)
            buf.append(_C_ENERGY_DELTA)
            put_int(buf, self.delta)
        buf.append(_C_SAMPLES)
        put_int(buf, n)
        buf.append(_C_ERRORS)
        put_int(buf, self.errors)
        self.reset()
