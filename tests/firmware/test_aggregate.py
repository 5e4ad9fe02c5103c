"""firmware/gemeter/aggregate.py: a period's statistics per channel, its status bits, and a
clean start after each period. Under CPython and MicroPython (``fw``), with stand-ins for
drivers and the frame builder.
"""

from __future__ import annotations

from gateway import protocol as wire
from tests.support.fwrunner import FirmwareRunner


def test_aggregate_statistics_status_and_reset(fw: FirmwareRunner) -> None:
    out = fw.run_code("""
from channel_map import channel_map
from gemeter.aggregate import ChannelAggregate
from gemeter.drivers import KIND_CRC, KIND_TIMEOUT
class R:  # a driver's reading (drivers/__init__.py): mV, mA, mW, mvar, mVA, pf, mHz
    def __init__(self, *v):
        (self.voltage_mv, self.current_ma, self.power_mw, self.reactive_mvar,
         self.apparent_mva, self.pf_milli, self.frequency_mhz) = v
a = ChannelAggregate(3)
a.add(R(230000, -1500, -345000, None, None, 980, 50010), energy_wh=7, delta_mwh=5)
a.add(R(231000, -1501, -345001, None, None, 970, 50020), energy_wh=8, delta_mwh=6)
a.fail(KIND_CRC)
full = channel_map(a)
empty = channel_map(a)             # nothing since: invalid, no measurement keys at all
a.fail(KIND_TIMEOUT)
failed = channel_map(a)
a.add(R(1, 2, 3, 4, 5, None, None), alarm=True)
alarm = channel_map(a)
print(json.dumps({"full": full, "empty": empty, "failed": failed, "alarm": alarm}))
""")
    invalid, partial, crc, timeout, ic_alarm = (wire.ST_INVALID, wire.ST_PARTIAL, wire.ST_CRC,
                                                wire.ST_TIMEOUT, wire.ST_IC_ALARM)
    q = wire.QUANTITY_BY_NAME
    k_index, k_status = str(wire.C_INDEX), str(wire.C_STATUS)
    k_samples, k_errors, k_v, k_i, k_p, k_pf, k_f, k_e, k_de = (str(q[n].key) for n in (
        "samples", "errors", "voltage", "current", "power", "power_factor", "frequency",
        "energy", "energy_delta"))
    full = out["full"]
    assert full[k_index] == 3 and full[k_samples] == 2 and full[k_errors] == 1
    assert full[k_status] == partial | crc  # some samples failed: partial, with the kind
    assert full[k_v] == [230500, 230000, 231000]
    # Means round half away from zero, also for negative (exporting) values.
    assert full[k_i] == [-1501, -1501, -1500] and full[k_p] == [-345001, -345001, -345000]
    assert (full[k_pf], full[k_f], full[k_e], full[k_de]) == (970, 50020, 8, 11)  # last; sum
    assert out["empty"] == {k_index: 3, k_samples: 0, k_errors: 0, k_status: invalid}
    assert out["failed"][k_status] == invalid | timeout and out["failed"][k_errors] == 1
    assert k_v not in out["failed"]  # never a stale value
    assert out["alarm"][k_status] == ic_alarm and out["alarm"][k_de] == 0
