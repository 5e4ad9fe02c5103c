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


def mac_tag(key: bytes, protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The HMAC 256/64 tag of RFC 9052 section 6.3 for these fields."""
    structure = cbor2.dumps(["MAC0", protected, external_aad, payload])
    return hmac.new(key, structure, hashlib.sha256).digest()[:TAG_LEN]


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
        return Mac0(protected, kid, payload, tag)

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
