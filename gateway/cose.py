"""COSE_Mac0 (RFC 9052) with HMAC 256/64 for gridedge frames, on cbor2 and hmac.

Only what protocol v1 uses: tag 17, a protected header {1: 4 (alg HMAC 256/64), 4: kid},
an empty unprotected map, and an 8-byte tag computed over the MAC_structure of RFC 9052
section 6.3, ["MAC0", protected, external_aad = h'', payload]. Received messages are
parsed by ``strict_cbor`` (never cbor2: see there why); structural problems raise
``ProtocolError`` (MALFORMED, TRUNCATED); verification compares in constant time. ``sign``
builds messages with cbor2, for tools and tests.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import cbor2

from gateway import strict_cbor
from gateway.errors import ProtocolError, Reason

COSE_MAC0_TAG = 17
HDR_ALG = 1
HDR_KID = 4
ALG_HMAC_256_64 = 4
TAG_LEN = 8


def _bstr_head(n: int) -> bytes:
    # CBOR major type 2 (byte string) head for length n, shortest form (RFC 8949 4.2.1).
    if n < 24:
        return bytes([0x40 | n])
    if n < 0x100:
        return bytes([0x58, n])
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    return b"\x5a" + n.to_bytes(4, "big")


_MAC0_PREFIX = b"\x84\x64MAC0"  # array(4), text "MAC0"
_KEYED: dict[bytes, hmac.HMAC] = {}  # HMAC state after the key, per key (pads computed once)


def mac_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """CBOR of ["MAC0", protected, external_aad, payload], built directly (hot path)."""
    return b"".join((_MAC0_PREFIX, _bstr_head(len(protected)), protected,
                     _bstr_head(len(external_aad)), external_aad,
                     _bstr_head(len(payload)), payload))


def mac_tag(key: bytes, protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The HMAC 256/64 tag of RFC 9052 section 6.3 for these fields."""
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) > 100_000:  # bounded: a registry is far smaller than this
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    h = keyed.copy()
    h.update(mac_structure(protected, payload, external_aad))
    return h.digest()[:TAG_LEN]


def _kid(protected: bytes) -> bytes:
    """The key id of a protected header, which must be exactly {1: 4, 4: kid}."""
    hdr = strict_cbor.loads(protected, max_depth=1)
    if not isinstance(hdr, dict) or hdr.get(HDR_ALG) != ALG_HMAC_256_64:
        raise ProtocolError(Reason.MALFORMED, "protected header: alg must be 4 (HMAC 256/64)")
    kid = hdr.get(HDR_KID)
    if not isinstance(kid, bytes) or not kid:
        raise ProtocolError(Reason.MALFORMED, "protected header: kid missing")
    return kid


def _bstr(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    major, length, start = strict_cbor.head(data, pos)
    if major != 2:
        raise ProtocolError(Reason.MALFORMED, f"COSE_Mac0 {what} is not a byte string")
    end = start + length
    if end > len(data):
        raise ProtocolError(Reason.TRUNCATED, f"COSE_Mac0 {what} runs past the end")
    return data[start:end], end


@dataclass(frozen=True, slots=True)
class Mac0:
    protected: bytes
    kid: bytes
    payload: bytes
    tag: bytes

    @staticmethod
    def decode(data: bytes) -> Mac0:
        # The envelope has one shape: tag 17, an array of 4, a byte string, an empty map,
        # two byte strings. Walked head by head (the hot path), trusting no length.
        major, arg, pos = strict_cbor.head(data, 0)
        if major != 6 or arg != COSE_MAC0_TAG:
            raise ProtocolError(Reason.MALFORMED, "not a COSE_Mac0 message (tag 17)")
        major, arg, pos = strict_cbor.head(data, pos)
        if major != 4 or arg != 4:
            raise ProtocolError(Reason.MALFORMED, "COSE_Mac0 must be an array of 4")
        protected, pos = _bstr(data, pos, "protected header")
        major, arg, pos = strict_cbor.head(data, pos)
        if major != 5 or arg != 0:
            raise ProtocolError(Reason.MALFORMED, "COSE_Mac0 unprotected header must be {}")
        payload, pos = _bstr(data, pos, "payload")
        tag, pos = _bstr(data, pos, "tag")
        if pos != len(data):
            raise ProtocolError(Reason.MALFORMED, f"{len(data) - pos} bytes after COSE_Mac0")
        if len(tag) != TAG_LEN:
            raise ProtocolError(Reason.MALFORMED, f"tag must be {TAG_LEN} bytes, got {len(tag)}")
        return Mac0(protected, _kid(protected), payload, tag)

    def kid_text(self) -> str:
        try:
            return self.kid.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(Reason.MALFORMED, "kid is not UTF-8") from e

    def verify(self, key: bytes) -> bool:
        return hmac.compare_digest(mac_tag(key, self.protected, self.payload), self.tag)

    @staticmethod
    def sign(key: bytes, kid: bytes, payload: bytes) -> bytes:
        protected = cbor2.dumps({HDR_ALG: ALG_HMAC_256_64, HDR_KID: kid}, canonical=True)
        tag = mac_tag(key, protected, payload)
        return cbor2.dumps(cbor2.CBORTag(COSE_MAC0_TAG, [protected, {}, payload, tag]))
