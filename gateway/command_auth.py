"""Command requests from the cloud: parsed, checked and verified against the operators' keys.

A broker credential is not an authorisation: a command request must be signed by an
operator key the gateway is configured to trust (``[commands] operator_keys``, Ed25519
public keys), so whoever steals the cloud broker's password still cannot switch a relay.
A request is a JSON object (docs/cloud.md, "Commands"): ``id`` (1..16 of A-Z a-z 0-9 . _ -),
``device``, ``op``, ``args`` (an object), ``expires`` (Unix ms), ``operator`` (the key id:
the first 8 bytes of SHA-256 of the raw public key, hex) and ``signature`` (base64 of the
Ed25519 signature). The signed bytes are the deterministic CBOR of
``["gridedge/v1 command", gateway id, id, device, op, args, expires]``: a request signed
for one gateway is refused by every other, and nothing outside the signature changes what
runs. ``check`` returns the ``Request`` or raises ``Refused`` with one reason (``REASONS``)
and a detail for the log: the caller counts it, answers it and, for the reasons that
mean someone tried (``SECURITY``), raises an event. Pure logic on ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_REQUEST = 4096  # bytes of one request message
MAX_EXPIRY_S = 7 * 86_400
MAX_CHUNK = 300  # bytes of firmware in one update-chunk (its command stays within 512)
MAX_BUNDLE = 1 << 20  # bytes of one firmware bundle, as the firmware takes
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SIGNED_LABEL = "gridedge/v1 command"
ID = re.compile(r"[A-Za-z0-9._-]{1,16}")
SECURITY = frozenset({"unsigned", "unknown_operator", "bad_signature"})
REASONS = ("malformed", "unsigned", "unknown_operator", "bad_signature", "unknown_device",
           "unknown_op", "bad_args", "expired", "too_far")
ArgValue = int | str | bool | None


class Refused(Exception):
    def __init__(self, reason: str, detail: str, request_id: str = "",
                 device: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
        self.request_id, self.device = request_id, device


@dataclass(frozen=True)
class Request:
    id: str
    device: str
    op: str
    expires_ms: int
    operator: str
    args: dict[str, ArgValue] = field(default_factory=dict)


def key_id(public_key: bytes) -> str:
    """An operator key's id: the first 8 bytes of SHA-256 of its 32 raw bytes, hex."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def signed_bytes(gateway: str, rid: str, device: str, op: str, args: dict[str, ArgValue],
                 expires_ms: int) -> bytes:
    return cbor2.dumps([SIGNED_LABEL, gateway, rid, device, op, args, expires_ms],
                       canonical=True)


def _relay(args: dict[str, ArgValue]) -> bool:
    seconds, name = args.get("seconds"), args.get("name")
    return args.get("state") in ("on", "off") and set(args) <= {"state", "seconds", "name"} \
        and (seconds is None or (type(seconds) is int and 1 <= seconds <= MAX_EXPIRY_S)) \
        and (name is None or (isinstance(name, str) and 0 < len(name) <= 16))


def _set(args: dict[str, ArgValue]) -> bool:
    return set(args) == {"key", "value"} and isinstance(args["key"], str) \
        and isinstance(args["value"], (str, int, bool))


def _update(args: dict[str, ArgValue]) -> bool:
    v, size, sha, trial = (args.get("version"), args.get("size"), args.get("sha256"),
                           args.get("trial_s", 600))
    return set(args) <= {"version", "size", "sha256", "trial_s"} \
        and isinstance(v, str) and 0 < len(v) <= 16 \
        and type(size) is int and 0 < size <= MAX_BUNDLE \
        and isinstance(sha, str) and SHA256_HEX.fullmatch(sha) is not None \
        and type(trial) is int and 30 <= trial <= 86_400


def _chunk(args: dict[str, ArgValue]) -> bool:
    at, data = args.get("at"), args.get("data")
    if set(args) != {"at", "data"} or type(at) is not int or not 0 <= at < MAX_BUNDLE \
            or not isinstance(data, str):
        return False
    try:
        return 0 < len(base64.b64decode(data, validate=True)) <= MAX_CHUNK
    except (binascii.Error, ValueError):
        return False


def device_args(op: str, args: dict[str, ArgValue]) -> dict[str, ArgValue | bytes]:
    """The arguments as the device takes them: an update chunk's data as bytes (base64 in
    the JSON request, a CBOR byte string in the command: a third smaller)."""
    if op == "update-chunk":
        return {**args, "data": base64.b64decode(str(args["data"]))}
    return dict(args)


# What each operation's arguments must be, given the device (the board checks them again,
# with the console's rules for ``set``); factory-reset names the device once more, so it
# is never a slip.
OPS: dict[str, Callable[[dict[str, ArgValue], str], bool]] = {
    "relay": lambda a, _d: _relay(a),
    "set": lambda a, _d: _set(a),
    "reboot": lambda a, _d: not a,
    "time": lambda a, _d: not a,
    "read": lambda a, _d: not a,
    "factory-reset": lambda a, d: a == {"confirm": d},
    "key-rotate": lambda a, _d: not a,  # the gateway makes the key (keyring.py)
    # A firmware bundle (tools/bundle.py): named, sent in chunks, asked after.
    "update": lambda a, _d: _update(a),
    "update-chunk": lambda a, _d: _chunk(a),
    "update-status": lambda a, _d: not a,
}


class Authority:
    def __init__(self, gateway: str, operator_keys: list[bytes], devices: set[str]) -> None:
        self.gateway = gateway
        self.keys = {key_id(k): Ed25519PublicKey.from_public_bytes(k) for k in operator_keys}
        self.devices = devices

    def check(self, payload: bytes, now_ms: int | None = None) -> Request:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if len(payload) > MAX_REQUEST:
            raise Refused("malformed", f"{len(payload)} bytes, at most {MAX_REQUEST}")
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise Refused("malformed", f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise Refused("malformed", "not a JSON object")
        rid, device = obj.get("id"), obj.get("device")
        known = (rid if isinstance(rid, str) else "", device if isinstance(device, str) else "")
        op, args, expires = obj.get("op"), obj.get("args", {}), obj.get("expires")
        if not (isinstance(rid, str) and ID.fullmatch(rid) and isinstance(device, str)
                and isinstance(op, str) and isinstance(args, dict)
                and type(expires) is int and expires >= 0
                and all(isinstance(v, (int, str, bool)) or v is None for v in args.values())):
            raise Refused("malformed", "id, device, op, args, expires", *known)
        operator, signature = obj.get("operator"), obj.get("signature")
        if not operator or not signature:
            raise Refused("unsigned", "no operator or signature", rid, device)
        key = self.keys.get(operator) if isinstance(operator, str) else None
        if key is None:
            raise Refused("unknown_operator", f"operator {str(operator)[:32]!r} not trusted",
                          rid, device)
        try:
            sig = base64.b64decode(str(signature), validate=True)
            key.verify(sig, signed_bytes(self.gateway, rid, device, op, args, expires))
        except (InvalidSignature, binascii.Error, ValueError):
            raise Refused("bad_signature", f"by {operator}", rid, device) from None
        # Signed: from here on the request is an operator's, and refused for what it says.
        if device not in self.devices:
            raise Refused("unknown_device", device, rid, device)
        rule = OPS.get(op)
        if rule is None:
            raise Refused("unknown_op", op[:32], rid, device)
        if not rule(args, device):
            raise Refused("bad_args", json.dumps(args)[:120], rid, device)
        if expires <= now_ms:
            raise Refused("expired", f"{(now_ms - expires) / 1000:.0f} s ago", rid, device)
        if expires > now_ms + MAX_EXPIRY_S * 1000:
            raise Refused("too_far", f"expires in more than {MAX_EXPIRY_S // 86400} days",
                          rid, device)
        return Request(rid, device, op, expires, operator, args)


def sign(private_key: bytes, gateway: str, rid: str, device: str, op: str,
         args: dict[str, ArgValue], expires_ms: int) -> dict[str, object]:
    """A signed request (for the CLI and the tests)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(private_key)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = key.sign(signed_bytes(gateway, rid, device, op, args, expires_ms))
    return {"id": rid, "device": device, "op": op, "args": args, "expires": expires_ms,
            "operator": key_id(public), "signature": base64.b64encode(sig).decode()}
