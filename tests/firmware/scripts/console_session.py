# Run the installer console with scripted input (CPython -S and MicroPython).
# stdin: {"root": folder with board.json etc., and what the installer types: "input" (text),
#         or "input_parts": [[hex, times], ...] (raw bytes, e.g. not UTF-8, each part
#         repeated: a 1 MB line is typed without holding it in this process's heap)}
# The console reads bytes, as it reads a board's serial port (sys.stdin.buffer).
import binascii
import json
import sys

from gemeter import console
from gemeter.start import Paths


class Typed:
    """A byte stream of parts, each repeated, read one byte at a time."""

    def __init__(self, parts):
        self.parts = parts
        self.part = 0
        self.times = 0
        self.pos = 0

    def read(self, n=1):
        while self.part < len(self.parts):
            data, times = self.parts[self.part]
            if self.pos < len(data):
                self.pos += 1
                return data[self.pos - 1 : self.pos]
            self.pos = 0
            self.times += 1
            if self.times >= times:
                self.part += 1
                self.times = 0
        return b""


req = json.loads(sys.stdin.read())
if "input_parts" in req:
    parts = [(binascii.unhexlify(h), n) for h, n in req["input_parts"]]
else:
    parts = [(req["input"].encode("utf-8"), 1)]
console.run(Paths(req["root"]), stream_in=Typed(parts), stream_out=sys.stdout)
