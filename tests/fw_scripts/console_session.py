# Run the installer console with scripted input (CPython -S and MicroPython).
# stdin: {"root": folder with board.json etc., "input": text typed by the installer}
import io
import json
import sys

from gemeter import console
from gemeter.app import Paths

req = json.loads(sys.stdin.read())
console.run(Paths(req["root"]), stream_in=io.StringIO(req["input"]), stream_out=sys.stdout)
