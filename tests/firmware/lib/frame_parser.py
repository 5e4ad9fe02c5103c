"""Verify and decode gridedge frames with firmware code: the tests' half of frame.py.

The interop tests check that frames built by the gateway's independent cbor2 code parse
here, under CPython and the MicroPython unix port. A meter never parses frames, so this
module (and the CBOR decoder it uses) lives with the tests and is never flashed;
tests/support/fwrunner.py puts tests/firmware/lib on both interpreters' module path. Everything a frame
is checked against (tag, header, MAC, version, key id) comes from firmware/gemeter/frame.py.
"""

import cbor_decoder
import cbor_encoder as cbor
from gemeter import auth
from gemeter.frame import MAX_MESSAGE, FrameError

# docs/protocol.md (the builder keeps its own as private constants, not importable).
VERSION = 1
TAG_LEN = 8
COSE_MAC0_TAG = 17
HDR_ALG = 1
HDR_KID = 4
ALG_HMAC_256_64 = 4
F_VERSION = 0
F_DEVICE = 1


def _mac(mac, protected, payload):
    """The tag over the whole MAC_structure, encoded at once (the builder takes it over
    the structure's parts): RFC 9052 section 6.3."""
    return mac.digest(cbor.dumps(["MAC0", protected, b"", payload]))[:TAG_LEN]


def _loads(data, what):
    try:
        return cbor_decoder.loads(data)
    except cbor.CBORError as e:
        raise FrameError("malformed %s: %s" % (what, e))


def parse(msg, key_for):
    """Verify and decode a frame; returns the reading map.

    key_for(device_id) returns the device's key or None. Raises FrameError.
    """
    if len(msg) > MAX_MESSAGE:
        raise FrameError("too large: %d bytes" % len(msg))
    outer = _loads(msg, "message")
    if not isinstance(outer, cbor.Tag) or outer.tag != COSE_MAC0_TAG:
        raise FrameError("not a COSE_Mac0 message")
    parts = outer.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise FrameError("COSE_Mac0 must be an array of 4")
    protected, unprotected, payload, tag = parts
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, dict)
        and isinstance(payload, bytes)
        and isinstance(tag, bytes)
    ):
        raise FrameError("COSE_Mac0 fields have wrong types")
    hdr = _loads(protected, "protected header")
    if not isinstance(hdr, dict) or hdr.get(HDR_ALG) != ALG_HMAC_256_64:
        raise FrameError("unsupported algorithm")
    kid = hdr.get(HDR_KID)
    if not isinstance(kid, bytes):
        raise FrameError("missing key id")
    try:
        device_id = str(kid, "utf-8")
    except UnicodeError:
        raise FrameError("key id is not UTF-8")
    key = key_for(device_id)
    if key is None:
        raise FrameError("unknown device %s" % device_id)
    if not auth.equal(_mac(auth.HMACSHA256(key), protected, payload), tag):
        raise FrameError("bad MAC")
    reading = _loads(payload, "payload")
    if not isinstance(reading, dict) or reading.get(F_VERSION) != VERSION:
        raise FrameError("unsupported protocol version")
    if reading.get(F_DEVICE) != device_id:
        raise FrameError("device id does not match key id")
    return reading
