"""Sources: adapters from each metering driver to channel aggregates.

A source owns one driver and the channel indices it feeds, reads the driver once per sample
and hands the scaled integers to the aggregates, or a failure kind when the driver raised.
The PZEM keeps its own energy register (Wh, in the module's non-volatile memory): the
delta is taken between samples, and a register that runs backwards (reset, or the known
wrap of some units) is flagged as ST_CHIP_RESET for that period rather than reported as
negative energy. The ADE7953 driver integrates energy itself; its totals are restored
from and checkpointed to the device state.

An ADE7953's two inputs (A, B) feed two channels. Boards differ in which input sits behind
which terminal, and installers clamp current transformers either way round, so
``ADESource.configure`` takes the board file's meter entry and the device settings:

- ``map`` in the board entry, ``ade_map`` in the settings (which wins unless empty): "ab"
  (default) reports input A as the first channel, "ba" input B;
- ``invert`` in the board entry (a list of "a"/"b": inputs the PCB wires reversed), and
  ``ade_invert_a``/``ade_invert_b`` in the settings (a CT clamped the wrong way round): each
  reverses the sign of that input's power, power factor and energy, so both together cancel;
- ``ade_phcal_a``/``ade_phcal_b``: phase calibration written to PHCALA/PHCALB.

Calibration entries, energy totals and channel numbers stay those of the reported channels.
What only the console does with a source (read at once, raw counts, reset a counter) is in
console.py, which is unloaded before the meter runs.
"""

from gemeter.drivers import KIND_RESET, DriverError

ADE_MAPS = ("ab", "ba")


def ade_settings(meter, cfg):
    """(order, invert, phcal) of an ADE7953 from its board entry and the device settings.

    order[i] is the chip input (0 = A, 1 = B) behind the meter's i-th channel; invert and
    phcal are per chip input. Raises ValueError for a board entry it cannot use."""
    mapping = cfg.get("ade_map") or meter.get("map", "ab")
    if mapping not in ADE_MAPS:
        raise ValueError("ade7953 map must be ab or ba, not %r" % (mapping,))
    wired = meter.get("invert", ())
    for x in wired:
        if x not in ("a", "b"):
            raise ValueError("ade7953 invert lists inputs a and b, not %r" % (x,))
    invert = (("a" in wired) != cfg.get("ade_invert_a"), ("b" in wired) != cfg.get("ade_invert_b"))
    return ((0, 1) if mapping == "ab" else (1, 0), invert,
            (cfg.get("ade_phcal_a"), cfg.get("ade_phcal_b")))


def _wh(mwh):
    # whole Wh, truncated toward zero (an exporting channel's total is negative)
    return mwh // 1000 if mwh >= 0 else -((-mwh) // 1000)


class PZEMSource:
    kind = "pzem004t"

    def __init__(self, driver, channel):
        self.driver = driver
        self.channels = (channel,)
        self.last_energy = None

    def sample(self, aggs):
        agg = aggs[self.channels[0]]
        try:
            r = self.driver.read()
        except DriverError as e:
            agg.fail(e.kind)
            return
        delta = 0
        if self.last_energy is not None:
            if r.energy_wh >= self.last_energy:
                delta = (r.energy_wh - self.last_energy) * 1000
            else:
                agg.mark_kind(KIND_RESET)  # status bits are the aggregate's business
                delta = r.energy_wh * 1000
        self.last_energy = r.energy_wh
        agg.add(r, energy_wh=r.energy_wh, delta_mwh=delta, alarm=r.alarm)

    def energy_mwh(self):
        return {}  # the module keeps its own register


class ADESource:
    kind = "ade7953"

    def __init__(self, driver, channel_a, channel_b):
        self.driver = driver
        self.channels = (channel_a, channel_b)
        self.order = (0, 1)  # chip input (0 = A) behind each of self.channels

    def configure(self, meter, cfg):
        """Apply the board entry's wiring and the settings (see the module docstring).
        Before or after restore(): totals and calibration stay with their channels."""
        order, invert, phcal = ade_settings(meter, cfg)
        d = self.driver
        if order != self.order:  # per-input state was laid out by channel: follow the wires
            d.energy_mwh.reverse()
            cal = d.calibration
            d.calibration = {"volts": cal["volts"]}
            for k in ("amps", "watts", "wh"):
                d.calibration[k] = (cal[k][1], cal[k][0])
            self.order = order
        d.invert = invert
        d.set_phase_calibration(phcal[0], phcal[1])

    def sample(self, aggs):
        try:
            readings = self.driver.read()
        except DriverError as e:
            for ch in self.channels:
                aggs[ch].fail(e.kind)
            return
        for i in (0, 1):
            k = self.order[i]
            r = readings[k]
            aggs[self.channels[i]].add(r, energy_wh=_wh(self.driver.energy_mwh[k]),
                                       delta_mwh=r.energy_delta_mwh)

    def energy_mwh(self):
        return {str(ch): self.driver.energy_mwh[self.order[i]]
                for i, ch in enumerate(self.channels)}

    def restore(self, saved):
        by_input = [0, 0]
        for i, ch in enumerate(self.channels):
            by_input[self.order[i]] = saved.get(str(ch), 0)
        self.driver.restore_energy(by_input[0], by_input[1])
