# Firmware-side frame builder for the interop tests (CPython -S and MicroPython).
# stdin: {"device": id, "key": hex, "frames": [reading maps with string keys]}
# stdout: one JSON object {"messages": [hex], "wire": [hex]}.
import binascii
import json
import sys

from channel_map import Encoded
from gemeter import frame, framing


def intkeys(m):
    return {int(k): m[k] for k in m}


req = json.loads(sys.stdin.read())
builder = frame.FrameBuilder(req["device"], binascii.unhexlify(req["key"]))
messages = []
wired = []
for r in req["frames"]:
    r = intkeys(r)
    msg = builder.build(
        r[2],  # reading map keys (docs/protocol.md): boot
        r[3],  # seq
        r[4],  # uptime
        r[6],  # period
        [Encoded(intkeys(c)) for c in r[8]],  # channels
        unix_ms=r.get(5),
        dropped=r.get(7, 0),
    )
    messages.append(str(binascii.hexlify(msg), "ascii"))
    wired.append(str(binascii.hexlify(framing.encode(msg)), "ascii"))
print(json.dumps({"messages": messages, "wire": wired}))
