"""Deterministic CBOR (RFC 8949) encoder for the firmware tests (never flashed: a meter
writes only the fixed frame layout of gemeter/frame.py).

Runs unchanged under MicroPython and CPython. The encoder emits the core deterministic
encoding of RFC 8949 section 4.2.1: shortest-form heads, definite lengths only, map keys
sorted by the bytewise order of their encodings, floats in the shortest of binary16/32/64
that keeps the value. It therefore produces byte-identical output on both interpreters
(MicroPython's dict order is not insertion order, so sorting is what makes that true).

The decoder is cbor_decoder.py beside it. ``Tag``, ``Simple`` and ``UNDEFINED`` are here
because the encoder writes them.
"""

import math
import struct

from gemeter.frame import head  # the meter's own: shortest-form heads, up to 2**64 - 1

MAX_DEPTH = 16

_INF = float("inf")


class CBORError(ValueError):
    """Input that is not well-formed CBOR, or a value the codec cannot encode."""


class Tag:
    """A tagged data item (major type 6) other than the bignum tags 2 and 3."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value

    def __hash__(self):
        return hash((self.tag, self.value))  # TypeError for an unhashable value, as for lists

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Simple:
    """A simple value (major type 7) without a Python equivalent, e.g. simple(16)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and other.value == self.value

    def __hash__(self):
        return hash(self.value) ^ 0x5E

    def __repr__(self):
        return "Simple(%d)" % self.value


class _Undefined:
    def __repr__(self):
        return "undefined"


UNDEFINED = _Undefined()


# ---------------------------------------------------------------- encoding


def _half_bits(f):
    # binary16 bit pattern of f if f is exactly representable in binary16, else None.
    sign = 0x8000 if struct.pack(">d", f)[0] & 0x80 else 0
    a = -f if sign else f
    if a == 0:
        return sign
    if a == _INF:
        return sign | 0x7C00
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
    if -13 <= e <= 16:  # normal binary16: exponent field e + 14 in 1..30
        mant = m * 2048
        if mant != int(mant):
            return None
        return sign | ((e + 14) << 10) | (int(mant) - 1024)
    k = a * 16777216  # subnormal binary16: a = k * 2**-24, k < 1024
    if k < 1024 and k == int(k):
        return sign | int(k)
    return None


def _float32_exact(f):
    try:
        b = struct.pack(">f", f)
    except OverflowError:  # CPython refuses to round out of range; MicroPython gives inf
        return None
    return b if struct.unpack(">f", b)[0] == f else None


def _encode_float(buf, f):
    if f != f:
        buf.extend(b"\xf9\x7e\x00")  # canonical NaN
        return
    h = _half_bits(f)
    if h is not None:
        buf.append(0xF9)
        buf.extend(struct.pack(">H", h))
        return
    b = _float32_exact(f)
    if b is not None:
        buf.append(0xFA)
        buf.extend(b)
        return
    buf.append(0xFB)
    buf.extend(struct.pack(">d", f))


def _bignum_bytes(n):
    size = 0
    t = n
    while t:
        size += 1
        t >>= 8
    out = bytearray(size)  # MicroPython's bytearray has no reverse(): fill from the end
    while n:
        size -= 1
        out[size] = n & 0xFF
        n >>= 8
    return bytes(out)


def _encode(buf, obj, depth):
    if depth > MAX_DEPTH:
        raise CBORError("nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        buf.append(0xF6)
    elif obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif isinstance(obj, int):
        major, n = (0, obj) if obj >= 0 else (1, -1 - obj)
        if n > 0xFFFFFFFFFFFFFFFF:  # bignum: tag 2 (positive) or 3 (negative)
            buf.append(0xC2 + major)
            b = _bignum_bytes(n)
            head(buf, 2, len(b))
            buf.extend(b)
        else:
            head(buf, major, n)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (list, tuple)):
        head(buf, 4, len(obj))
        for item in obj:
            _encode(buf, item, depth + 1)
    elif isinstance(obj, dict):
        head(buf, 5, len(obj))
        if _small_keys(obj):  # a frame's maps: one byte per key, in numeric order
            for k in sorted(obj):
                buf.append(k)
                _encode(buf, obj[k], depth + 1)
            return
        items = []
        for k in obj:
            kb = bytearray()
            _encode(kb, k, depth + 1)
            items.append((bytes(kb), obj[k]))
        items.sort(key=_first)
        for kb, v in items:
            buf.extend(kb)
            _encode(buf, v, depth + 1)
    elif isinstance(obj, float):
        _encode_float(buf, obj)
    elif isinstance(obj, Tag):
        head(buf, 6, obj.tag)
        _encode(buf, obj.value, depth + 1)
    elif isinstance(obj, Simple):
        if obj.value < 24:
            buf.append(0xE0 | obj.value)
        else:
            buf.append(0xF8)
            buf.append(obj.value)
    elif obj is UNDEFINED:
        buf.append(0xF7)
    else:
        raise CBORError("cannot encode %s" % type(obj))


def _first(pair):
    return pair[0]


def _small_keys(d):
    # Keys 0..23 encode as the one byte of their value, so their bytewise order is the
    # numeric one: no key needs encoding apart to be sorted.
    for k in d:
        if not isinstance(k, int) or k is True or k is False or not 0 <= k < 24:
            return False
    return True


def encode(buf, obj):
    """Append obj's deterministic encoding to the bytearray buf (a buffer made once)."""
    _encode(buf, obj, 0)


def dumps(obj):
    """Encode obj deterministically; returns bytes."""
    buf = bytearray()
    _encode(buf, obj, 0)
    return bytes(buf)
