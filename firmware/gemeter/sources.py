"""Sources: adapters from each metering driver to channel aggregates.

A source owns one driver and the channel indices it feeds, reads the driver once per sample
and hands the scaled integers to the aggregates, or a failure kind when the driver raised.
The PZEM keeps its own energy register (Wh, in the module's non-volatile memory): the
delta is taken between samples, and a register that runs backwards (reset, or the known
wrap of some units) is flagged as ST_CHIP_RESET for that period rather than reported as
negative energy. The ADE7953 driver integrates energy itself; its totals are restored
from and checkpointed to the device state.
"""

from gemeter import frame
from gemeter.drivers import DriverError


def _wh(mwh):
    # whole Wh, truncated toward zero (an exporting channel's total is negative)
    return mwh // 1000 if mwh >= 0 else -((-mwh) // 1000)


class PZEMSource:
    kind = "pzem004t"

    def __init__(self, driver, channel):
        self.driver = driver
        self.channels = (channel,)
        self._last_energy = None

    def sample(self, aggs):
        agg = aggs[self.channels[0]]
        try:
            r = self.driver.read()
        except DriverError as e:
            agg.fail(e.kind)
            return
        delta = 0
        if self._last_energy is not None:
            if r.energy_wh >= self._last_energy:
                delta = (r.energy_wh - self._last_energy) * 1000
            else:
                agg.mark(frame.ST_CHIP_RESET)
                delta = r.energy_wh * 1000
        self._last_energy = r.energy_wh
        agg.add(
            (r.voltage_mv, r.current_ma, r.power_mw, None, None),
            pf=r.pf_milli, freq=r.frequency_mhz, energy_wh=r.energy_wh, delta_mwh=delta,
            alarm=r.alarm,
        )

    def energy_mwh(self):
        return {}  # the module keeps its own register

    def read_now(self):
        """One reading per channel as (mV, mA, mW, mvar, mVA, pf, mHz) (console)."""
        r = self.driver.read()
        return [(r.voltage_mv, r.current_ma, r.power_mw, None, None, r.pf_milli,
                 r.frequency_mhz)]

    def reset_energy(self, _index):
        self.driver.reset_energy()
        self._last_energy = None


class ADESource:
    kind = "ade7953"

    def __init__(self, driver, channel_a, channel_b):
        self.driver = driver
        self.channels = (channel_a, channel_b)

    def sample(self, aggs):
        try:
            readings = self.driver.read()
        except DriverError as e:
            for ch in self.channels:
                aggs[ch].fail(e.kind)
            return
        for ch, r in zip(self.channels, readings):
            aggs[ch].add(
                (r.voltage_mv, r.current_ma, r.power_mw, r.reactive_mvar, r.apparent_mva),
                pf=r.pf_milli, freq=r.frequency_mhz,
                energy_wh=_wh(self.driver.energy_mwh[self.channels.index(ch)]),
                delta_mwh=r.energy_delta_mwh,
            )

    def energy_mwh(self):
        return {str(ch): self.driver.energy_mwh[i] for i, ch in enumerate(self.channels)}

    def read_now(self):
        return [(r.voltage_mv, r.current_ma, r.power_mw, r.reactive_mvar, r.apparent_mva,
                 r.pf_milli, r.frequency_mhz) for r in self.driver.read()]

    def raw_counts(self, index):
        return self.driver.raw_counts(index)

    def reset_energy(self, index):
        self.driver.energy_mwh[index] = 0

    def restore(self, saved):
        self.driver.restore_energy(saved.get(str(self.channels[0]), 0),
                                   saved.get(str(self.channels[1]), 0))
