# Firmware-side frame builder for the interop tests (CPython -S and MicroPython).
# stdin: {"device": id, "key": hex, "frames": [reading maps with string keys]}
# stdout: one JSON object {"messages": [hex], "wire": [hex]}.
import binascii
import json
import sys

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
        r[frame.F_BOOT],
        r[frame.F_SEQ],
        r[frame.F_UPTIME],
        r[frame.F_PERIOD],
        [intkeys(c) for c in r[frame.F_CHANNELS]],
        unix_ms=r.get(frame.F_TIME),
        dropped=r.get(frame.F_DROPPED, 0),
    )
    messages.append(str(binascii.hexlify(msg), "ascii"))
    wired.append(str(binascii.hexlify(framing.encode(msg)), "ascii"))
print(json.dumps({"messages": messages, "wire": wired}))
