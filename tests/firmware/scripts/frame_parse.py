# Firmware-side frame parser for the interop tests (CPython -S and MicroPython): the
# parser and deframer are test-only firmware code in tests/firmware/lib (never flashed).
# stdin: {"keys": {device: hex}, "messages": [hex], "stream": hex of serial bytes}
# stdout: {"messages": [{"reading": map as [[k, v]...]} or {"err": text}],
#          "stream": [{"message": hex} or {"err": text}]}
import binascii
import json
import sys

import frame_parser
import framing_decoder

req = json.loads(sys.stdin.read())
keys = {d: binascii.unhexlify(k) for d, k in req["keys"].items()}


def pairs(v):
    # JSON keeps only string keys: render maps as sorted [key, value] pairs.
    if isinstance(v, dict):
        return sorted([[k, pairs(v[k])] for k in v])
    if isinstance(v, list):
        return [pairs(x) for x in v]
    return v


out = []
for h in req.get("messages", []):
    try:
        out.append({"reading": pairs(frame_parser.parse(binascii.unhexlify(h), keys.get))})
    except ValueError as e:  # FrameError, FramingError and CBORError are ValueErrors
        out.append({"err": str(e)})
stream = []
for msg, err in framing_decoder.Deframer().feed(binascii.unhexlify(req.get("stream", ""))):
    stream.append({"err": str(err)} if err else {"message": str(binascii.hexlify(msg), "ascii")})
print(json.dumps({"messages": out, "stream": stream}))
