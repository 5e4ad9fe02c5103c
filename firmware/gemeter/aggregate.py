"""Per-channel aggregation over one reporting period (pure logic, no I/O).

Samples of V, I, P, Q and S are summed with their min and max; power factor, frequency and
the energy register keep their last value; the energy delta is summed; errors are counted
by kind and become status bits. A period without one good sample yields an *invalid*
channel: status ST_INVALID and no measurement keys at all (never a stale value). A period
with some failed samples is ST_PARTIAL, aggregated over the good ones. No allocation per
sample: all state lives in lists made once.
"""

from gemeter import frame
from gemeter.drivers import KIND_ABSENT, KIND_CRC, KIND_RESET, KIND_TIMEOUT

# Order of the aggregated quantities and their frame keys.
_KEYS = (frame.C_VOLTAGE, frame.C_CURRENT, frame.C_POWER, frame.C_REACTIVE, frame.C_APPARENT)
_STATUS_OF_KIND = {
    KIND_CRC: frame.ST_CRC,
    KIND_TIMEOUT: frame.ST_TIMEOUT,
    KIND_ABSENT: frame.ST_TIMEOUT,
    KIND_RESET: frame.ST_CHIP_RESET,
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
            self.status |= frame.ST_IC_ALARM

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
        self.status |= _STATUS_OF_KIND.get(kind, frame.ST_TIMEOUT)

    def mark(self, status_bits):
        self.status |= status_bits

    def mark_kind(self, kind):
        """A driver condition (a DriverError kind) for the period, without a failed sample."""
        self.status |= _STATUS_OF_KIND.get(kind, frame.ST_TIMEOUT)

    def to_map(self):
        """The channel map for the frame (frame.C_* keys), then ready for the next period."""
        status = self.status | self.flags
        m = {frame.C_INDEX: self.index, frame.C_SAMPLES: self.count, frame.C_ERRORS: self.errors}
        if self.count == 0:
            m[frame.C_STATUS] = status | frame.ST_INVALID
            self.reset()
            return m
        if self.errors:
            status |= frame.ST_PARTIAL
        m[frame.C_STATUS] = status
        n = self.count
        for i in range(5):
            if self.present[i]:
                s = self.sums[i]
                mean = (s + n // 2) // n if s >= 0 else -((-s + n // 2) // n)
                m[_KEYS[i]] = [mean, self.mins[i], self.maxs[i]]
        if self.pf is not None:
            m[frame.C_PF] = self.pf
        if self.freq is not None:
            m[frame.C_FREQ] = self.freq
        if self.energy is not None:
            m[frame.C_ENERGY] = self.energy
        m[frame.C_ENERGY_DELTA] = self.delta
        self.reset()
        return m
