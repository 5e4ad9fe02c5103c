"""COSE_Mac0 (RFC 9052) with HMAC 256/64 for gridedge frames, on cbor2 and hmac.

Only what protocol v1 uses: tag 17, a protected header {1: 4 (alg HMAC 256/64), 4: kid},
an empty unprotected map, and an 8-byte tag computed over the MAC_structure of RFC 9052
section 6.3, ["MAC0", protected, external_aad = h'', payload]. Structural problems raise
``ProtocolError`` (MALFORMED, TRUNCATED); verification compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import cbor2

from gridedge.gateway.errors import ProtocolError, Reason

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


_KIDS: dict[bytes, bytes] = {}  # protected header bytes -> kid (a device's never changes)


def _kid(protected: bytes) -> bytes:
    kid = _KIDS.get(protected)
    if kid is not None:
        return kid
    try:
        hdr = cbor2.loads(protected)
    except cbor2.CBORDecodeEOF as e:
        raise ProtocolError(Reason.TRUNCATED, f"protected header: {e}") from e
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(Reason.MALFORMED, f"protected header: {e}") from e
    if not isinstance(hdr, dict) or hdr.get(HDR_ALG) != ALG_HMAC_256_64:
        raise ProtocolError(Reason.MALFORMED, "protected header: alg must be 4 (HMAC 256/64)")
    kid = hdr.get(HDR_KID)
    if not isinstance(kid, bytes) or not kid:
        raise ProtocolError(Reason.MALFORMED, "protected header: kid missing")
    if len(_KIDS) > 100_000:  # bounded: garbage headers cannot grow it without limit
        _KIDS.clear()
    _KIDS[protected] = kid
    return kid


@dataclass(frozen=True, slots=True)
class Mac0:
    protected: bytes
    kid: bytes
    payload: bytes
    tag: bytes

    @staticmethod
    def decode(data: bytes) -> Mac0:
        try:
            outer = cbor2.loads(data)
        except cbor2.CBORDecodeEOF as e:
            raise ProtocolError(Reason.TRUNCATED, str(e)) from e
        except (cbor2.CBORDecodeError, ValueError, RecursionError) as e:
            raise ProtocolError(Reason.MALFORMED, f"not CBOR: {e}") from e
        if not isinstance(outer, cbor2.CBORTag) or outer.tag != COSE_MAC0_TAG:
            raise ProtocolError(Reason.MALFORMED, "not a COSE_Mac0 message (tag 17)")
        parts = outer.value
        if not isinstance(parts, list) or len(parts) != 4:
            raise ProtocolError(Reason.MALFORMED, "COSE_Mac0 must be an array of 4")
        protected, unprotected, payload, tag = parts
        if not (
            isinstance(protected, bytes)
            and isinstance(unprotected, dict)
            and isinstance(payload, bytes)
            and isinstance(tag, bytes)
        ):
            raise ProtocolError(Reason.MALFORMED, "COSE_Mac0 fields have wrong types")
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
