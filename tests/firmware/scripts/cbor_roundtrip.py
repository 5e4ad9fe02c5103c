# Interpreter-side half of the CBOR tests (runs under CPython -S and MicroPython): the
# general encoder and decoder the firmware tests use (tests/firmware/lib, never flashed).
# stdin: JSON list of hex strings. stdout: one JSON list, per input either
# {"err": message} or {"v": plain form of the decoded value, "re": hex of its re-encoding}.
import binascii
import json
import struct
import sys

import cbor_decoder
import cbor_encoder as cbor


def plain(v):
    # A JSON-safe, interpreter-independent rendering of a decoded value.
    if v is None or v is True or v is False:
        return v
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"f64": str(binascii.hexlify(struct.pack(">d", v)), "ascii")}
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return {"bytes": str(binascii.hexlify(v), "ascii")}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        pairs = [[plain(k), plain(v[k])] for k in v]
        pairs.sort(key=lambda p: json.dumps(p[0]))
        return {"map": pairs}
    if isinstance(v, cbor.Tag):
        return {"tag": v.tag, "v": plain(v.value)}
    if isinstance(v, cbor.Simple):
        return {"simple": v.value}
    if v is cbor.UNDEFINED:
        return {"undefined": True}
    raise TypeError("unexpected type")


out = []
for h in json.loads(sys.stdin.read()):
    try:
        v = cbor_decoder.loads(binascii.unhexlify(h))
    except cbor.CBORError as e:
        out.append({"err": str(e)})
        continue
    out.append({"v": plain(v), "re": str(binascii.hexlify(cbor.dumps(v)), "ascii")})
print(json.dumps(out))
