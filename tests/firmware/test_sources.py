"""firmware/gemeter/sources.py: each driver's readings and failures handed to the channel
aggregates. Under CPython and MicroPython (``fw``), with stand-ins for drivers and the frame
builder.
"""

from __future__ import annotations

from gateway import protocol as wire
from tests.support.fwrunner import FirmwareRunner


def test_sources_hand_driver_readings_and_failures_to_the_aggregates(
    fw: FirmwareRunner
) -> None:
    """PZEM: the energy delta between samples, a register that runs backwards flagged as a
    chip reset (never negative energy), a driver error as a failed sample. ADE7953: the
    board's input order ("ba") and the settings' invert."""
    out = fw.run_code("""
from channel_map import channel_map
from gemeter.aggregate import ChannelAggregate
from gemeter.drivers import DriverError, KIND_TIMEOUT
from gemeter.sources import ADESource, PZEMSource, ade_settings
class R:
    def __init__(self, **kw):
        for k, v in kw.items():  # (MicroPython's __dict__ is read-only)
            setattr(self, k, v)
class Pzem:
    def __init__(self):
        self.energy = [10, 12, 3, None]
    def read(self):
        e = self.energy.pop(0)
        if e is None:
            raise DriverError("no answer", KIND_TIMEOUT)
        return R(voltage_mv=230000, current_ma=1000, power_mw=230000, reactive_mvar=None,
                 apparent_mva=None, pf_milli=1000, frequency_mhz=50000, energy_wh=e,
                 alarm=False)
aggs = [ChannelAggregate(0)]
src = PZEMSource(Pzem(), 0)
src.sample(aggs)
src.sample(aggs)
first = channel_map(aggs[0])
src.sample(aggs)   # 12 -> 3 Wh: the register went back
src.sample(aggs)   # the module is silent
second = channel_map(aggs[0])
orders = [ade_settings({"map": m}, {"ade_map": s})[0] for m, s in
          (("ab", ""), ("ba", ""), ("ab", "ba"))]
inverts = [ade_settings({"invert": w}, {"ade_invert_a": a, "ade_invert_b": False})[1]
           for w, a in ((["a"], False), (["a"], True), ([], True))]
try:
    ade_settings({"map": "ac"}, {})
    bad = "accepted"
except ValueError:
    bad = "refused"
print(json.dumps({"first": first, "second": second, "orders": orders, "inverts": inverts,
                  "bad": bad}))
""")
    reset, timeout, partial = wire.ST_CHIP_RESET, wire.ST_TIMEOUT, wire.ST_PARTIAL
    de, status = (str(wire.QUANTITY_BY_NAME["energy_delta"].key), str(wire.C_STATUS))
    assert out["first"][de] == 2000  # 10 -> 12 Wh, in mWh; the first sample has no delta
    assert out["second"][status] == reset | timeout | partial
    assert out["second"][de] == 3000  # counted from zero after the register went back
    assert out["orders"] == [[0, 1], [1, 0], [1, 0]]  # the setting wins unless empty
    # The board's wiring and the installer's setting each reverse an input: both cancel.
    assert out["inverts"] == [[True, False], [False, False], [True, False]]
    assert out["bad"] == "refused"
