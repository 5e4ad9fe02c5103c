"""HMAC-SHA256 and constant-time comparison for frame authentication.

MicroPython has hashlib.sha256 but no hmac module, so HMAC (RFC 2104) is built here on top
of it. The padded inner and outer keys are computed once per key, because a board MACs a
frame every report interval with the same key. Comparison of tags runs in time that
depends only on the length, never on where the first difference is.
"""

import hashlib

_BLOCK = 64


class HMACSHA256:
    """HMAC-SHA256 with a fixed key: ``HMACSHA256(key).digest(msg)``; ``digest(a, b, ...)``
    is the MAC of the parts joined, without joining them."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = bytes(key) + bytes(_BLOCK - len(key))
        self._ipad = bytes(b ^ 0x36 for b in key)
        self._opad = bytes(b ^ 0x5C for b in key)

    def digest(self, *parts):
        inner = hashlib.sha256(self._ipad)
        for part in parts:
            inner.update(part)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()


def equal(a, b):
    """Constant-time equality of two byte strings (time depends on length only)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0

