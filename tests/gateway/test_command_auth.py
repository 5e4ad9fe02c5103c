"""Operator-signed command requests (gateway/command_auth.py): only a trusted operator's
signature, for this gateway, over exactly what will run, makes a request."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.command import MAX_COMMAND, Command
from gateway.command_auth import (
    MAX_CHUNK,
    OPS,
    REASONS,
    SECURITY,
    Authority,
    Refused,
    device_args,
    key_id,
    sign,
)
from tests.support.fwrunner import REPO

OPERATOR = bytes(range(32))
INTRUDER = bytes(range(1, 33))
NOW = 1_789_948_800_000


def public(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


AUTH = Authority("gw-1", [public(OPERATOR)], {"mtr-1", "mtr-2"})


def request(key: bytes = OPERATOR, gateway: str = "gw-1", **over: object) -> bytes:
    fields = {"rid": "c1", "device": "mtr-1", "op": "relay",
              "args": {"state": "off", "seconds": 600}, "expires_ms": NOW + 60_000}
    fields.update(over)
    return json.dumps(sign(key, gateway, **fields)).encode()  # type: ignore[arg-type]


def refused(payload: bytes) -> str:
    with pytest.raises(Refused) as e:
        AUTH.check(payload, NOW)
    return e.value.reason


def test_a_signed_request_for_this_gateway_is_accepted() -> None:
    r = AUTH.check(request(), NOW)
    assert (r.id, r.device, r.op, r.args, r.operator) == (
        "c1", "mtr-1", "relay", {"state": "off", "seconds": 600}, key_id(public(OPERATOR)))


def edited(payload: bytes, **changes: object) -> bytes:
    obj = json.loads(payload)
    obj.update(changes)
    return json.dumps(obj).encode()


def test_every_way_to_get_it_wrong_has_its_reason() -> None:
    good = request()
    assert refused(edited(good, signature="")) == "unsigned"
    assert refused(edited(good, operator=None)) == "unsigned"
    assert refused(request(INTRUDER)) == "unknown_operator"
    # A trusted operator's signature, but over something else, or for another gateway.
    assert refused(edited(good, args={"state": "on", "seconds": 600})) == "bad_signature"
    assert refused(edited(good, device="mtr-2")) == "bad_signature"
    assert refused(edited(good, expires=NOW + 120_000)) == "bad_signature"
    assert refused(request(gateway="gw-2")) == "bad_signature"
    assert refused(edited(good, signature=base64.b64encode(b"x" * 64).decode())) == \
        "bad_signature"
    assert refused(edited(good, signature="not base64!")) == "bad_signature"
    # Signed, and refused for what it says.
    assert refused(request(device="mtr-9")) == "unknown_device"
    assert refused(request(op="format-disk", args={})) == "unknown_op"
    assert refused(request(args={"state": "dim"})) == "bad_args"
    assert refused(request(op="reboot", args={"now": True})) == "bad_args"
    # A factory reset must name its device once more: a copied request cannot slip.
    assert refused(request(op="factory-reset", args={})) == "bad_args"
    assert refused(request(op="factory-reset", args={"confirm": "mtr-2"})) == "bad_args"
    assert AUTH.check(request(op="factory-reset", args={"confirm": "mtr-1"}), NOW).op == \
        "factory-reset"
    assert refused(request(expires_ms=NOW - 1)) == "expired"
    assert refused(request(expires_ms=NOW + 8 * 86_400_000)) == "too_far"
    assert refused(b"[1, 2]") == "malformed"
    assert refused(b"{" * 5000) == "malformed"
    assert refused(b"[" * 3000 + b"]" * 3000) == "malformed"
    assert refused(request(rid="a/b")) == "malformed"
    assert set(REASONS) >= SECURITY


@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
@settings(max_examples=400, deadline=None)
def test_any_bytes_are_refused_with_a_reason(data: bytes) -> None:
    assert refused(data) in REASONS


@given(st.dictionaries(st.sampled_from(["id", "device", "op", "args", "expires",
                                        "operator", "signature", "x"]),
                       st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(max_size=20) | st.lists(st.integers(), max_size=3)
                       | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)))
@settings(max_examples=400, deadline=None)
def test_any_json_object_is_refused_with_a_reason(obj: dict[str, object]) -> None:
    assert refused(json.dumps(obj).encode()) in REASONS


def test_the_documented_operations_are_the_ones_taken() -> None:
    schema = json.loads((REPO / "docs" / "schemas" / "command.schema.json").read_text())
    assert set(schema["properties"]["op"]["enum"]) == set(OPS)


ARG = (st.none() | st.booleans() | st.integers(-2, 2 << 20) | st.text(max_size=70)
       | st.binary(max_size=320).map(lambda b: base64.b64encode(b).decode())
       | st.text(alphabet="0123456789abcdef", min_size=62, max_size=66))


@given(op=st.sampled_from(["update", "update-chunk", "update-status"]),
       args=st.dictionaries(st.sampled_from(["version", "size", "sha256", "trial_s", "at",
                                             "data", "x"]), ARG, max_size=5),
       device=st.sampled_from(["mtr-1", "m" * 32]))
@settings(max_examples=300, deadline=None)
def test_any_update_request_is_taken_whole_or_refused(op: str, args: dict[str, object],
                                                      device: str) -> None:
    """Signed update requests with any arguments: refused (bad_args), or taken, and
    then sealed for the device within the 512 bytes a meter accepts."""
    auth = Authority("gw-1", [public(OPERATOR)], {device})
    payload = request(rid="u1", device=device, op=op, args=args)
    try:
        req = auth.check(payload, NOW)
    except Refused as e:
        assert e.reason == "bad_args", e
        return
    sealed = Command(device, NOW, req.expires_ms, b"u" * 16, op,
                     device_args(op, req.args), NOW).seal(bytes(32))
    assert len(sealed) <= MAX_COMMAND
    if op == "update-chunk":
        data = device_args(op, req.args)["data"]
        assert isinstance(data, bytes) and 0 < len(data) <= MAX_CHUNK
