"""Command frames down to a device (docs/protocol.md section 8): the downlink key and the seal.

A command is a COSE_Mac0 message, like an uplink frame, MACed with the device's
*downlink* key: HKDF-SHA256 (RFC 5869, empty salt) of its device key with the info
``DOWN_LABEL``. A frame the device sent can never verify as a command, and a command
never as a frame. Its payload is a deterministic CBOR map: the device id, a counter
above every earlier one for the device (the device refuses any other: a replay or a
reordering), the expiry (Unix ms), the command id (1..16 bytes, carried back by the
result, and the key of idempotency) and the operation with its arguments. The firmware's
half is firmware/gemeter/command.py. Pure logic on cbor2 and hmac.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from gateway.cose import Mac0

DOWN_LABEL = b"gridedge/v1 down"
WRAP_LABEL = b"gridedge/v1 wrap"
MAX_COMMAND = 512  # bytes of one command message, as the firmware accepts
MAX_ID = 16
C_DEVICE, C_COUNTER, C_EXPIRES, C_ID, C_OP, C_ARGS, C_SENT = 1, 2, 3, 4, 5, 6, 7

Arg = int | str | bool | bytes | None


def derive(key: bytes, label: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``key`` with an empty salt and ``label`` as info: 32
    bytes."""
    prk = hmac.new(bytes(32), key, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def wrap(new_key: bytes, key: bytes, counter: int) -> bytes:
    """A new device key for a ``key-rotate`` command, hidden under the key the device
    holds: XOR with HMAC-SHA256(HKDF(key, WRAP_LABEL), "rekey" || counter as 8 bytes
    big-endian). The counter is never used twice for a device, so no pad is; the
    command's MAC makes the result tamper-evident. The same call unwraps."""
    pad = hmac.new(derive(key, WRAP_LABEL), b"rekey" + counter.to_bytes(8, "big"),
                   hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(new_key, pad, strict=True))


@dataclass(frozen=True)
class Command:
    device: str
    counter: int
    expires_ms: int
    id: bytes
    op: str
    args: Mapping[str, Arg] = field(default_factory=dict)
    sent_ms: int | None = None  # the gateway's clock as it seals it (the ``time`` command)

    def seal(self, device_key: bytes) -> bytes:
        """The command's message, MACed with the device's downlink key."""
        if not 1 <= len(self.id) <= MAX_ID:
            raise ValueError(f"a command id is 1..{MAX_ID} bytes")
        body: dict[int, object] = {C_DEVICE: self.device, C_COUNTER: self.counter,
                                   C_EXPIRES: self.expires_ms, C_ID: self.id, C_OP: self.op}
        if self.args:
            body[C_ARGS] = dict(self.args)
        if self.sent_ms is not None:
            body[C_SENT] = self.sent_ms
        payload = cbor2.dumps(body, canonical=True)
        msg = Mac0.sign(derive(device_key, DOWN_LABEL), self.device.encode(), payload)
        if len(msg) > MAX_COMMAND:
            raise ValueError(f"a command is at most {MAX_COMMAND} bytes, this is {len(msg)}")
        return msg
