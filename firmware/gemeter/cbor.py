"""Deterministic CBOR (RFC 8949) encoder and bounded decoder for the firmware.

Runs unchanged under MicroPython and CPython. The encoder emits the core deterministic
encoding of RFC 8949 section 4.2.1: shortest-form heads, definite lengths only, map keys
sorted by the bytewise order of their encodings, floats in the shortest of binary16/32/64
that keeps the value. It therefore produces byte-identical output on both interpreters
(MicroPython's dict order is not insertion order, so sorting is what makes that true).
The decoder accepts every well-formed item of the supported subset, including
indefinite-length strings, arrays and maps, and checks every length taken from the wire
against the bytes actually present before it slices or loops, with a nesting limit.
"""

import math
import struct

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


def _head(buf, major, n):
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(mt | 25)
        buf.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        buf.append(mt | 26)
        buf.extend(struct.pack(">I", n))
    else:
        buf.append(mt | 27)
        buf.extend(struct.pack(">Q", n))


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
            _head(buf, 2, len(b))
            buf.extend(b)
        else:
            _head(buf, major, n)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(buf, 4, len(obj))
        for item in obj:
            _encode(buf, item, depth + 1)
    elif isinstance(obj, dict):
        items = []
        for k in obj:
            kb = bytearray()
            _encode(kb, k, depth + 1)
            items.append((bytes(kb), obj[k]))
        items.sort(key=_first)
        _head(buf, 5, len(items))
        for kb, v in items:
            buf.extend(kb)
            _encode(buf, v, depth + 1)
    elif isinstance(obj, float):
        _encode_float(buf, obj)
    elif isinstance(obj, Tag):
        _head(buf, 6, obj.tag)
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


def dumps(obj):
    """Encode obj deterministically; returns bytes."""
    buf = bytearray()
    _encode(buf, obj, 0)
    return bytes(buf)


# ---------------------------------------------------------------- decoding

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
