# Drive PZEM004T drivers on the virtual board (CPython -S and MicroPython).
# stdin: {"uart": id, "ops": [[op, addr, arg...], ...]}; stdout: one JSON list of results.
import json
import sys

from machine import UART

from gemeter.drivers import DriverError
from gemeter.drivers import pzem004t

req = json.loads(sys.stdin.read())
uart = UART(req["uart"], baudrate=9600, timeout=0)
drivers = {}


def dev(addr):
    if addr not in drivers:
        drivers[addr] = pzem004t.PZEM004T(uart, addr, timeout_ms=req.get("timeout_ms", 100))
    return drivers[addr]


out = []
for op in req["ops"]:
    name = op[0]
    try:
        if name == "read":
            r = dev(op[1]).read()
            out.append({"v": r.voltage_mv, "i": r.current_ma, "p": r.power_mw, "e": r.energy_wh,
                        "f": r.frequency_mhz, "pf": r.pf_milli, "alarm": r.alarm,
                        "si": [r.voltage, r.current, r.power, r.frequency, r.power_factor]})
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
            out.append(pzem004t.scan(uart, op[1], timeout_ms=30))
        elif name == "errors":
            d = dev(op[1])
            out.append({"errors": d.errors, "stale": d.stale_bytes})
    except DriverError as e:
        out.append({"error": e.kind, "msg": str(e)})
    except ValueError as e:
        out.append({"value_error": str(e)})
print(json.dumps(out))
