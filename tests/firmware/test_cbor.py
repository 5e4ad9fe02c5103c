"""The firmware tests' CBOR codec: RFC Appendix A vectors and round-trip properties, on both
interpreters.

A meter encodes only the fixed frame layout (gemeter/frame.py; its bytes are compared with
cbor2's canonical encoding in tests/system/test_protocol_interop.py). The general codec the
firmware tests use to build and read CBOR under MicroPython lives in tests/firmware/lib
(cbor_encoder.py, cbor_decoder.py) and is never flashed; a helper that is wrong would make
the tests that use it lie, so it is held to the RFC here.

The vectors (tests/data, copied from RFC 7049 Appendix A) run through that encoder and
decoder under CPython and the MicroPython unix port;
every decoded value is compared with the vector's own expectation, every round-trip vector
must re-encode to the same bytes, and the two interpreters must agree byte for byte. One
vector, 0xf818 = simple(24), is well-formed in RFC 7049 but not in RFC 8949 (section 3.3: a
two-byte simple value below 32 is invalid); the codec follows RFC 8949 and rejects it.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import math
import struct
import sys
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fwrunner import REPO, FirmwareRunner, firmware_module

VECTORS = json.loads(
    (REPO / "tests" / "data" / "cbor-rfc7049-appendix-a.json").read_text()
)
NOT_WELL_FORMED_IN_RFC8949 = {"f818"}


def plain(v: Any) -> Any:
    """The same interpreter-independent rendering as tests/firmware/scripts/cbor_roundtrip.py."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"f64": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        pairs = sorted(([plain(k), plain(x)] for k, x in v.items()), key=lambda p: json.dumps(p[0]))
        return {"map": pairs}
    raise TypeError(type(v))


def diag(p: Any) -> str:
    """RFC 8949 diagnostic notation of a plain rendering (for the vectors that give one)."""
    if isinstance(p, str):
        return json.dumps(p, ensure_ascii=False)
    if isinstance(p, list):
        return "[" + ", ".join(diag(x) for x in p) + "]"
    if "int" in p:
        return str(p["int"])
    if "f64" in p:
        f = struct.unpack(">d", bytes.fromhex(p["f64"]))[0]
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return repr(f)
    if "bytes" in p:
        return f"h'{p['bytes']}'"
    if "map" in p:
        return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in p["map"]) + "}"
    if "tag" in p:
        return f"{p['tag']}({diag(p['v'])})"
    if "simple" in p:
        return f"simple({p['simple']})"
    if "undefined" in p:
        return "undefined"
    raise TypeError(p)


def expected_diag(vector: dict[str, Any]) -> str:
    if vector["diagnostic"].startswith("(_ "):  # indefinite byte string decodes to the join
        chunks = vector["diagnostic"][3:-1].split(", ")
        return "h'" + "".join(c[2:-1] for c in chunks) + "'"
    return str(vector["diagnostic"])


def test_appendix_a_vectors(fw: FirmwareRunner) -> None:
    results = fw.run_json("cbor_roundtrip.py", [v["hex"] for v in VECTORS])
    assert len(results) == len(VECTORS)
    checked = 0
    for vec, res in zip(VECTORS, results, strict=True):
        if vec["hex"] in NOT_WELL_FORMED_IN_RFC8949:
            assert "simple value 24" in res.get("err", ""), res
            continue
        assert "err" not in res, (vec["hex"], res)
        if "decoded" in vec:
            assert res["v"] == plain(vec["decoded"]), vec["hex"]
        else:
            assert diag(res["v"]) == expected_diag(vec), vec["hex"]
        if vec["roundtrip"]:
            assert res["re"] == vec["hex"], vec["hex"]
        else:  # re-encoded in the (no longer) deterministic form of the same value
            original, again = (cbor2.loads(bytes.fromhex(h)) for h in (vec["hex"], res["re"]))
            assert plain(again) == plain(original), vec["hex"]
            assert len(res["re"]) <= len(vec["hex"]) and res["re"] != vec["hex"]
        checked += 1
    assert checked == len(VECTORS) - len(NOT_WELL_FORMED_IN_RFC8949)


def test_interpreters_agree_on_vectors(fw_micropython: FirmwareRunner) -> None:
    """Both interpreters decode and re-encode every vector identically. Runs both itself:
    with pytest-xdist the two parametrised runs above may land on different workers."""
    hexes = [v["hex"] for v in VECTORS]
    cpython = FirmwareRunner("cpython", sys.executable).run_json("cbor_roundtrip.py", hexes)
    assert cpython == fw_micropython.run_json("cbor_roundtrip.py", hexes)


# ---------------------------------------------------------------- properties (CPython in-process)

cbor = firmware_module("cbor_encoder")  # tests/firmware/lib, like the decoder
cbor_decoder = firmware_module("cbor_decoder")  # tests/firmware/lib: the decoder is not flashed

keys = st.one_of(st.integers(-(2**64), 2**64 - 1), st.text(max_size=8))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.floats(allow_nan=False),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)
    ),
    max_leaves=30,
)


@given(values)
@settings(max_examples=400, deadline=None)
def test_roundtrip_against_cbor2(v: Any) -> None:
    enc = cbor.dumps(v)
    assert cbor2.loads(enc) == v  # an independent decoder reads the firmware's bytes
    assert cbor_decoder.loads(enc) == v
    assert cbor_decoder.loads(cbor2.dumps(v)) == v  # and reads cbor2's (non-canonical) bytes
    assert cbor.dumps(cbor_decoder.loads(enc)) == enc  # deterministic: a fixed point


@given(st.dictionaries(keys, st.integers(), min_size=2, max_size=12))
def test_map_keys_sorted_bytewise(d: dict[Any, int]) -> None:
    enc = cbor.dumps(d)
    encoded_keys = [cbor.dumps(k) for k in d]
    # Walk the encoding and collect the key encodings in wire order.
    pos = 1 if len(d) < 24 else 2
    wire_keys = []
    for _ in d:
        _, end = cbor_decoder.decode_prefix(enc, pos)
        wire_keys.append(enc[pos:end])
        _, pos = cbor_decoder.decode_prefix(enc, end)
    assert wire_keys == sorted(encoded_keys)


@given(st.floats(allow_nan=False))
def test_floats_shortest_exact(f: float) -> None:
    enc = cbor.dumps(f)
    assert cbor2.loads(enc) == f
    assert math.copysign(1, cbor2.loads(enc)) == math.copysign(1, f)
    width = {0xF9: 2, 0xFA: 4, 0xFB: 8}[enc[0]]
    # Never wider than needed: no narrower IEEE format holds f exactly.
    assert (width == 2) == _fits(">e", f)
    assert (width <= 4) == _fits(">f", f)


def _fits(fmt: str, f: float) -> bool:
    try:
        return bool(struct.unpack(fmt, struct.pack(fmt, f))[0] == f)
    except OverflowError:
        return False


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    # Any input either decodes or raises CBORError: never IndexError, struct.error, ...
    with contextlib.suppress(cbor.CBORError):
        cbor_decoder.loads(data)


@pytest.mark.parametrize(
    "hexdata",
    [
        "9bffffffffffffffff",  # array of 2^64-1 items in 9 bytes
        "bbffffffffffffffff",  # map of 2^64-1 pairs
        "5bffffffffffffffff00",  # byte string of 2^64-1 bytes
        "7a7fffffff41",  # text string of 2^31-1 bytes
        "81" * 40 + "00",  # nesting deeper than the limit
        "1c",  # reserved additional information
        "ff",  # lone break
        "5f4101ff00",  # trailing byte
        "a20101" + "01" + "02",  # duplicate key
    ],
)
def test_hostile_lengths_rejected(hexdata: str) -> None:
    with pytest.raises(cbor.CBORError):
        cbor_decoder.loads(bytes.fromhex(hexdata))


# ---------------------------------------------------------------- properties on MicroPython


@given(st.lists(values, min_size=1, max_size=25))
@settings(max_examples=15, deadline=None)
def test_micropython_matches_cpython_bytes(
    fw_micropython: FirmwareRunner, batch: list[Any]
) -> None:
    """cbor2 encodes, MicroPython's firmware decodes and re-encodes: bytes equal CPython's."""
    results = fw_micropython.run_json(
        "cbor_roundtrip.py", [cbor2.dumps(v).hex() for v in batch]
    )
    for v, res in zip(batch, results, strict=True):
        assert "err" not in res, res
        assert res["re"] == cbor.dumps(v).hex()
        assert cbor2.loads(binascii.unhexlify(res["re"])) == v
