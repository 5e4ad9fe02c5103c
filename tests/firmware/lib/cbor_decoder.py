"""CBOR decoder for the firmware tests: the decoding half of cbor_encoder.py beside it.

A meter never decodes, so this module is kept off the board (``gridedge flash`` stages only
firmware/): tests/support/fwrunner.py puts tests/firmware/lib on the module path of both interpreters.
It runs unchanged under MicroPython and CPython. It accepts every well-formed item of the
supported subset, including indefinite-length strings, arrays and maps, and checks every
length taken from the wire against the bytes actually present before it slices or loops,
with the encoder's nesting limit. Values it cannot map to Python types come back as the
encoder's ``Tag``, ``Simple`` and ``UNDEFINED``, so ``cbor_encoder.dumps`` re-encodes them.
"""

import math
import struct

from cbor_encoder import MAX_DEPTH, UNDEFINED, CBORError, Simple, Tag

_INF = float("inf")

_BREAK = object()


def _half(h):
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = math.ldexp(mant, -24)
    elif exp == 31:
        v = _INF if mant == 0 else float("nan")
    else:
        v = math.ldexp(mant + 1024, exp - 25)
    return -v if h & 0x8000 else v


class _Decoder:
    def __init__(self, data):
        self.b = data
        self.i = 0
        self.n = len(data)

    def _need(self, k):
        if k > self.n - self.i:
            raise CBORError("truncated: need %d bytes at offset %d, have %d" % (k, self.i, self.n - self.i))

    def _arg(self, ai):
        # Returns the argument of a head with additional information ai (None = indefinite).
        b = self.b
        i = self.i
        if ai < 24:
            return ai
        if ai == 24:
            self._need(1)
            self.i = i + 1
            return b[i]
        if ai == 25:
            self._need(2)
            self.i = i + 2
            return struct.unpack_from(">H", b, i)[0]
        if ai == 26:
            self._need(4)
            self.i = i + 4
            return struct.unpack_from(">I", b, i)[0]
        if ai == 27:
            self._need(8)
            self.i = i + 8
            return struct.unpack_from(">Q", b, i)[0]
        if ai == 31:
            return None
        raise CBORError("reserved additional information %d at offset %d" % (ai, i - 1))

    def _bytes(self, k):
        self._need(k)
        i = self.i
        self.i = i + k
        return bytes(self.b[i : i + k])

    def _string(self, major, n, depth):
        if n is not None:
            raw = self._bytes(n)
        else:
            parts = []
            while True:
                self._need(1)
                ib = self.b[self.i]
                self.i += 1
                if ib == 0xFF:
                    break
                if ib >> 5 != major:
                    raise CBORError("indefinite string chunk of wrong type at offset %d" % (self.i - 1))
                k = self._arg(ib & 0x1F)
                if k is None:
                    raise CBORError("nested indefinite string at offset %d" % (self.i - 1))
                parts.append(self._bytes(k))
            raw = b"".join(parts)
        if major == 2:
            return raw
        try:
            return str(raw, "utf-8")
        except UnicodeError:
            raise CBORError("invalid UTF-8 in text string")

    def item(self, depth):
        if depth > MAX_DEPTH:
            raise CBORError("nesting deeper than %d" % MAX_DEPTH)
        self._need(1)
        ib = self.b[self.i]
        self.i += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == 7:
            return self._simple(ai)
        n = self._arg(ai)
        if major == 0:
            if n is None:
                raise CBORError("indefinite length on an integer")
            return n
        if major == 1:
            if n is None:
                raise CBORError("indefinite length on an integer")
            return -1 - n
        if major == 2 or major == 3:
            return self._string(major, n, depth)
        if major == 4:
            out = []
            if n is None:
                while True:
                    v = self.item(depth + 1)
                    if v is _BREAK:
                        return out
                    out.append(v)
            self._need(n)  # every item takes at least one byte
            for _ in range(n):
                v = self.item(depth + 1)
                if v is _BREAK:
                    raise CBORError("break inside a definite-length array")
                out.append(v)
            return out
        if major == 5:
            out = {}
            if n is not None:
                self._need(2 * n)  # every pair takes at least two bytes
            count = 0
            while n is None or count < n:
                k = self.item(depth + 1)
                if k is _BREAK:
                    if n is None:
                        return out
                    raise CBORError("break inside a definite-length map")
                v = self.item(depth + 1)
                if v is _BREAK:
                    raise CBORError("map key without a value")
                try:  # arrays and maps as keys are unhashable here
                    dup = k in out
                    out[k] = v
                except TypeError:
                    raise CBORError("unhashable map key")
                if dup:
                    raise CBORError("duplicate map key %r" % (k,))
                count += 1
            return out
        # major == 6: tag
        if n is None:
            raise CBORError("indefinite length on a tag")
        v = self.item(depth + 1)
        if v is _BREAK:
            raise CBORError("tag without content")
        if n == 2 or n == 3:
            if not isinstance(v, bytes):
                raise CBORError("bignum tag %d on a non-byte-string" % n)
            big = 0
            for x in v:
                big = (big << 8) | x
            return big if n == 2 else -1 - big
        return Tag(n, v)

    def _simple(self, ai):
        if ai < 20:
            return Simple(ai)
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            return UNDEFINED
        if ai == 24:
            self._need(1)
            v = self.b[self.i]
            self.i += 1
            if v < 32:
                raise CBORError("simple value %d in two-byte form" % v)
            return Simple(v)
        if ai == 25:
            self._need(2)
            self.i += 2
            return _half(struct.unpack_from(">H", self.b, self.i - 2)[0])
        if ai == 26:
            self._need(4)
            self.i += 4
            return struct.unpack_from(">f", self.b, self.i - 4)[0]
        if ai == 27:
            self._need(8)
            self.i += 8
            return struct.unpack_from(">d", self.b, self.i - 8)[0]
        if ai == 31:
            return _BREAK
        raise CBORError("reserved simple value encoding %d" % ai)


def decode_prefix(data, offset=0):
    """Decode one item starting at offset; returns (value, end_offset)."""
    d = _Decoder(data)
    d.i = offset
    v = d.item(0)
    if v is _BREAK:
        raise CBORError("unexpected break at offset %d" % offset)
    return v, d.i


def loads(data):
    """Decode exactly one item from data; trailing bytes are an error."""
    v, end = decode_prefix(data)
    if end != len(data):
        raise CBORError("%d trailing bytes after the item" % (len(data) - end))
    return v
