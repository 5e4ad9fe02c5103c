"""The rotated device keys (gateway/keyring.py) on a real SQLite file, and the verifier
that switches a device to its new key at the first frame MACed with it."""

from __future__ import annotations

from pathlib import Path

from gateway.dedup import Deduplicator
from gateway.devices import Device
from gateway.keyring import GRACE_S, Keyring
from gateway.registry import fingerprint
from gateway.verify import Verifier
from tests.support.gateway_fixtures import frame

OLD = bytes(range(32))
DEV = Device(OLD, generation=fingerprint(OLD))


def test_a_next_key_is_made_once_kept_and_promoted_only_by_its_own_use(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys.db")
    held, new = ring.begin("m1", DEV)
    assert held == OLD and len(new) == 32 and new != OLD
    assert ring.begin("m1", DEV) == (OLD, new)  # asked again: the same key
    assert ring.keys("m1", DEV).current == OLD and ring.keys("m1", DEV).others == (new,)
    assert not ring.promote("m1", DEV, OLD)  # the old key is no switch
    ring.close()
    ring = Keyring(tmp_path / "keys.db")  # durable before it left the gateway
    assert ring.rotating("m1", DEV) and ring.keys("m1", DEV).others == (new,)
    assert ring.promote("m1", DEV, new, now=100.0)
    assert ring.keys("m1", DEV, now=100.0 + GRACE_S - 1) == ring.keys("m1", DEV, now=100.0)
    assert ring.keys("m1", DEV, now=100.0).current == new
    assert ring.keys("m1", DEV, now=100.0).others == (OLD,)  # frames built before the switch
    assert ring.keys("m1", DEV, now=100.0 + GRACE_S + 1).others == ()
    assert ring.apply({"m1": DEV})["m1"].key == new
    assert ring.apply({"m1": DEV})["m1"].generation == DEV.generation  # same replay marks
    ring.close()


def test_a_device_provisioned_again_starts_from_its_registry_key(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys.db")
    _held, new = ring.begin("m1", DEV)
    assert ring.promote("m1", DEV, new)
    fresh = Device(bytes(32), generation=fingerprint(bytes(32)))
    assert ring.apply({"m1": fresh})["m1"].key == bytes(32)
    assert ring.keys("m1", fresh).current == bytes(32) and not ring.rotating("m1", fresh)
    ring.close()


def test_a_damaged_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "keys.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    ring = Keyring(tmp_path / "keys.db")
    assert ring.problem is not None and "moved to keys.db.corrupt-" in ring.problem
    assert ring.apply({"m1": DEV})["m1"].key == OLD
    assert (tmp_path / "keys.db").stat().st_mode & 0o777 == 0o600
    ring.close()


def test_the_verifier_takes_both_keys_then_only_the_new_one(tmp_path: Path) -> None:
    """Frames MACed with the old key pass while the rotation is pending; the first with
    the new key switches the device; after the grace, the old key no longer verifies."""
    ring = Keyring(tmp_path / "keys.db")
    _held, new = ring.begin("m1", DEV)
    v = Verifier({"m1": DEV}, Deduplicator({}), ring)
    assert v.verify(frame("m1", 0, key=OLD), "test") is not None
    assert v.verify(frame("m1", 1, key=new), "test") is not None  # the switch
    assert not ring.rotating("m1", DEV) and v.decoder.keys["m1"] == new
    assert v.verify(frame("m1", 2, key=OLD), "test") is not None  # built before it
    assert v.verify(frame("m1", 3, key=new), "test") is not None
    assert v.verify(frame("m1", 4, key=bytes(32)), "test") is None
    assert dict(v.rejected) == {"bad_mac": 1}
    ring._previous["m1"] = (OLD, 0.0)  # the grace is over
    assert v.verify(frame("m1", 5, key=OLD), "test") is None
    assert dict(v.rejected) == {"bad_mac": 2}
    ring.close()
