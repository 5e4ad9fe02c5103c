# Run the real firmware application on the virtual board for a number of cycles.
# stdin: {"root": folder holding board.json, config.json, key.bin; "cycles": n}
# stdout: one JSON line with App.stats().
import json
import sys

from gemeter.app import App

req = json.loads(sys.stdin.read())
app = App(req["root"])
print(json.dumps(app.run(max_cycles=req["cycles"])))
