# Drive PZEM004T drivers on the virtual board (CPython -S and MicroPython).
# stdin: {"uart": id, "ops": [[op, addr, arg...], ...], "timeout_ms", "backoff_ms",
#         "backoff_max_ms"}; stdout: one JSON list of results.
import json
import sys
import time

import machine
from machine import UART

from gemeter.drivers import DriverError
from gemeter.drivers import pzem004t_setup

req = json.loads(sys.stdin.read())
uart = UART(req["uart"], baudrate=9600, timeout=0)
drivers = {}


def dev(addr):
    if addr not in drivers:
        kw = {k: req[k] for k in ("backoff_ms", "backoff_max_ms") if k in req}
        drivers[addr] = pzem004t_setup.PZEM004TSetup(uart, addr, timeout_ms=req.get("timeout_ms", 100),
                                          **kw)
    return drivers[addr]


def reading(r):
    return {"v": r.voltage_mv, "i": r.current_ma, "p": r.power_mw, "e": r.energy_wh,
            "f": r.frequency_mhz, "pf": r.pf_milli, "alarm": r.alarm,
            "si": [r.voltage, r.current, r.power, r.frequency, r.power_factor]}


sources = {}


out = []
for op in req["ops"]:
    name = op[0]
    try:
        if name == "read":
            out.append(reading(dev(op[1]).read()))
        elif name == "reads":  # [reads, addr, n, gap_ms]: how many of each outcome
            kinds = {}
            for _ in range(op[2]):
                try:
                    dev(op[1]).read()
                    kind = "ok"
                except DriverError as e:
                    kind = e.kind
                kinds[kind] = kinds.get(kind, 0) + 1
                time.sleep_ms(op[3])
            out.append(kinds)
        elif name == "read_until_ok":  # [read_until_ok, addr, max_ms]: reads 10 ms apart
            start = time.ticks_ms()
            n = 0
            while True:
                n += 1
                try:
                    out.append({"reads": n, "reading": reading(dev(op[1]).read())})
                    break
                except DriverError:
                    if time.ticks_diff(time.ticks_ms(), start) > op[2]:
                        out.append({"reads": n, "reading": None})
                        break
                    time.sleep_ms(10)
        elif name == "period":  # [period, addr, samples]: one reporting period's channel map
            from channel_map import channel_map
            from gemeter.aggregate import ChannelAggregate
            from gemeter.sources import PZEMSource

            if op[1] not in sources:
                sources[op[1]] = (PZEMSource(dev(op[1]), 0), ChannelAggregate(0))
            src, agg = sources[op[1]]
            for _ in range(op[2]):
                src.sample([agg])
                time.sleep_ms(10)
            out.append({str(k): v for k, v in channel_map(agg).items()})
        elif name == "host":
            out.append(machine._board().query("X " + " ".join(str(a) for a in op[1:])))
        elif name == "stats":
            d = dev(op[1])
            out.append({k: getattr(d, k, None) for k in ("outages", "recoveries", "skipped",
                                                         "silent", "stale_bytes")})
            out[-1]["errors"] = dict(d.errors)
        elif name == "reset_energy":
            dev(op[1]).reset_energy()
            out.append("ok")
        elif name == "set_alarm":
            dev(op[1]).set_power_alarm(op[2])
            out.append("ok")
        elif name == "alarm":
            out.append(dev(op[1]).power_alarm())
        elif name == "set_address":
            d = dev(op[1])
            d.set_address(op[2])
            drivers[op[2]] = d
            out.append(d.address)
        elif name == "scan":
            out.append(pzem004t_setup.scan(uart, op[1], timeout_ms=30))
        elif name == "errors":
            d = dev(op[1])
            out.append({"errors": d.errors, "stale": d.stale_bytes})
    except DriverError as e:
        out.append({"error": e.kind, "msg": str(e)})
    except ValueError as e:
        out.append({"value_error": str(e)})
print(json.dumps(out))
