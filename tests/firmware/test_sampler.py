"""firmware/gemeter/sampler.py: samples into periods, each closed into a frame with its
measured length. Under CPython and MicroPython (``fw``), with stand-ins for drivers and the
frame builder.
"""

from __future__ import annotations

from gateway import protocol as wire
from tests.support.fwrunner import FirmwareRunner


def test_sampler_closes_a_period_after_its_samples(fw: FirmwareRunner) -> None:
    out = fw.run_code("""
import time
from channel_map import channel_map
from gemeter.sampler import Sampler
class R:
    voltage_mv, current_ma, power_mw = 230000, 1000, 230000
    reactive_mvar = apparent_mva = pf_milli = frequency_mhz = None
READING = R()
class Source:  # a driver's adapter: one good sample per call on channel 0, a CRC on 1
    def sample(self, aggs):
        aggs[0].add(READING)
        aggs[1].fail(1)
class Builder:  # the channels are the aggregates: each writes its map (and is reset)
    def build(self, *args):
        return args[:4] + ([channel_map(a) for a in args[4]],) + args[5:]
s = Sampler([Source()], 2, 4, Builder())
due = []
for _ in range(4):
    due.append(s.due())
    s.sample()
due.append(s.due())
time.sleep_ms(30) if hasattr(time, "sleep_ms") else time.sleep(0.03)
boot, seq, uptime, period, channels, unix_ms, dropped, results, relays = s.report(
    2, 9, 1234, 5, 1)
print(json.dumps({"due": due, "after": s.due(), "cycles": s.cycles, "frame": [boot, seq,
                  uptime, unix_ms, dropped, results, relays], "period": period,
                  "channels": channels,
}))
""")
    assert out["due"] == [False, False, False, False, True] and out["after"] is False
    assert out["cycles"] == 4 and out["frame"] == [2, 9, 1234, 5, 1, None, None]
    assert 30 <= out["period"] < 2000  # the measured length of the period, ms
    ch0, ch1 = out["channels"]
    samples = str(wire.QUANTITY_BY_NAME["samples"].key)
    assert ch0[samples] == 4 and ch1[samples] == 0  # a period's samples, per channel
