# One boot's worth of the device state (firmware/gemeter/state.py, state_load.py): load, then the boot
# counter's save, then (if asked) an energy checkpoint - what App does at start and end.
# stdin: {"path": the state files' base ("ROOT/state"), "energy": {channel: mWh} or null}
# stdout: one JSON line: the state as loaded, the new boot number, writes, problem.
import json
import sys

from gemeter.state_load import load

req = json.loads(sys.stdin.read())
state = load(req["path"])
out = {"loaded": state.boot, "energy_mwh": state.energy_mwh, "problem": state.problem}
out["boot"] = state.next_boot()
if req.get("energy") is not None:
    state.checkpoint(req["energy"], 900, force=True)
out["writes"] = state.writes
print(json.dumps(out))
