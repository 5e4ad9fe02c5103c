# Drive an ADE7953 driver on the virtual board (CPython -S and MicroPython).
# stdin: {"ops": [[op, args...]], "calibration": {...} or null, "reset_pin": bool,
#         "phcal": [a, b], "invert": [a, b]}
# With "source": {"meter": board entry, "settings": {KEY: console text}, "restore": {...}}
# the driver also feeds an ADESource on channels 1 and 2, configured as the application does.
# stdout: one JSON list of results.
import json
import sys
import time

import machine
from machine import SPI, Pin

from gemeter.config import Config
from gemeter.console import read_now
from gemeter.drivers import DriverError
from gemeter.drivers.ade7953 import ADE7953
from gemeter.sources import ADESource

req = json.loads(sys.stdin.read())
cal = req.get("calibration")
if cal:
    cal = {"volts": cal["volts"], "amps": tuple(cal["amps"]), "watts": tuple(cal["watts"]),
           "wh": tuple(cal["wh"])}
ade = ADE7953(SPI(1, baudrate=1000000, polarity=1, phase=1), Pin(5, Pin.OUT, value=1),
              reset=Pin(4, Pin.OUT, value=1) if req.get("reset_pin") else None,
              calibration=cal, phcal=req.get("phcal", (0, 0)),
              invert=req.get("invert", (False, False)))
out = []
src = None
if req.get("source"):
    spec = req["source"]
    cfg = Config("/nonexistent/config.json")
    problems = {k: cfg.set(k, v) for k, v in spec.get("settings", {}).items()}
    out.append({k: p for k, p in problems.items() if p})
    src = ADESource(ade, 1, 2)
    src.restore(spec.get("restore", {}))
    src.configure(spec["meter"], cfg)
for op in req["ops"]:
    try:
        if op[0] == "read":
            out.append([[r.voltage_mv, r.current_ma, r.power_mw, r.reactive_mvar, r.apparent_mva,
                         r.pf_milli, r.frequency_mhz, r.energy_delta_mwh] for r in ade.read()])
        elif op[0] == "reads":  # op[1] reads: how many of each outcome
            kinds = {}
            for _ in range(op[1]):
                try:
                    ade.read()
                    kind = "ok"
                except DriverError as e:
                    kind = e.kind
                kinds[kind] = kinds.get(kind, 0) + 1
            out.append(kinds)
        elif op[0] == "sleep_ms":
            time.sleep_ms(op[1])
            out.append(None)
        elif op[0] == "phcal":
            ade.set_phase_calibration(op[1], op[2])
            out.append(list(ade.phcal))
        elif op[0] == "source_read":
            out.append([[r.voltage_mv, r.current_ma, r.power_mw, r.reactive_mvar,
                         r.apparent_mva, r.pf_milli, r.frequency_mhz] for r in read_now(src)])
        elif op[0] == "source_sample":  # one sample through the aggregates, as the sampler
            from channel_map import channel_map
            from gemeter.aggregate import ChannelAggregate

            aggs = [ChannelAggregate(i) for i in range(3)]
            src.sample(aggs)
            maps = [channel_map(aggs[ch]) for ch in src.channels]
            out.append([[m[4][0], m[9]] for m in maps])  # power (mean), energy register
        elif op[0] == "source_energy":
            out.append(src.energy_mwh())
        elif op[0] == "energy":
            out.append(list(ade.energy_mwh))
        elif op[0] == "version":
            out.append(ade.version())
        elif op[0] == "host":
            out.append(machine._board().query("X " + " ".join(op[1:])))
        elif op[0] == "stats":
            out.append({"resets": ade.resets, "errors": dict(ade.errors)})
    except DriverError as e:
        out.append({"error": e.kind, "msg": str(e)})
print(json.dumps(out))
