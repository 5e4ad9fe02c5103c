"""Identity and replay that cannot lock a meter out (issue 9 section 3).

The de-duplicator alone (pure logic), then the verify stage that turns a refused device
into an alarm, then the real daemon: a meter whose boot counter went back is refused,
the cloud hears about it once, and the one documented command brings it back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dedup import WINDOW, Deduplicator
from gateway.devices import Device
from gateway.protocol import Channel, Frame, Stat, build_frame
from gateway.store import Store
from gateway.store_rows import Mark
from gateway.verify import Verifier
from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    device_key,
)
from tests.support.mqtt_capture import Capture, wait_for

T0 = 1_764_000_000_000  # a device clock in 2025, ms


def test_a_ring_resent_after_newer_frames_is_kept_not_dropped_as_stale() -> None:
    """A reconnecting meter that sends new frames before its resent ring: up to its
    largest ring (1024) behind, nothing is lost (it was 64 before)."""
    d = Deduplicator()
    for s in range(100):
        assert d.check("m", 1, s).accept
    assert d.check("m", 1, 1100).accept  # a new frame first...
    late = [d.check("m", 1, s) for s in range(100, 1100)]  # ...then the ring
    assert all(v.accept and v.late for v in late)
    assert d.check("m", 1, 500).reason == "duplicate"
    assert WINDOW >= 1024 and d.check("m", 1, 1100 - WINDOW).reason == "stale"


def test_the_whole_window_survives_the_store(tmp_path: Path) -> None:
    window = (1 << 1023) | (1 << 700) | 0b101
    s = Store(tmp_path / "s.db", 10**6, 3600)
    s.commit([], {"m": Mark(3, 5000, window, T0, "fp+1")})
    s.close()
    assert Store(tmp_path / "s.db", 10**6, 3600).marks() == {
        "m": Mark(3, 5000, window, T0, "fp+1")}


def test_a_new_key_or_a_resync_voids_the_old_marks() -> None:
    d = Deduplicator()
    assert d.check("m", 9, 50, generation="key-a").accept
    assert d.check("m", 1, 0, generation="key-a").reason == "replayed"
    assert d.check("m", 1, 0, generation="key-b").accept  # re-provisioned: a new key
    assert d.check("m", 1, 0, generation="key-b").reason == "duplicate"
    assert d.check("m", 1, 0, generation="key-b+1").accept  # `devices resync`
    legacy = Deduplicator({"m": Mark(9, 50, 1)})  # a mark from before generations
    assert legacy.check("m", 9, 50, generation="key-a").reason == "duplicate"


def test_a_newer_device_clock_proves_a_reset_counter_new() -> None:
    d = Deduplicator()
    for s in range(5):
        assert d.check("m", 57, s, T0 + s * 10_000).accept
    after = d.check("m", 1, 0, T0 + 3_600_000)  # factory reset: boot back to 1
    assert after.accept and after.reset == Mark(57, 4, 0b11111, T0 + 40_000)
    assert d.check("m", 1, 1, T0 + 3_610_000).accept
    assert d.check("m", 1, 1, T0 + 3_610_000).reason == "duplicate"
    # A captured frame of the discarded epoch: an older clock, refused both ways.
    assert d.check("m", 57, 3, T0 + 30_000).reason == "replayed"
    assert d.check("m", 57, 99, T0 + 30_000).reason == "replayed"
    # A corrupt counter near 2^32 does not shut the device out either.
    assert d.check("m", 2**32 - 1, 2**32 - 1, T0 + 3_620_000).accept
    assert d.check("m", 2, 0, T0 + 3_630_000).reset is not None
    # Without a clock there is no proof: refused (and verify raises the alarm).
    assert d.check("m", 1, 2).reason == "replayed"


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.booleans()),
                min_size=1, max_size=200), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_with_clocks_no_frame_is_ever_accepted_twice(genuine: list[tuple[int, int, bool]],
                                                     rng: object) -> None:
    """A device stream whose (boot, seq) may go anywhere (resets, jumps) but whose clock
    only moves forward, mixed with replays of anything sent before: every frame is
    accepted at most once, and a replay is never accepted."""
    import random

    assert isinstance(rng, random.Random)
    d = Deduplicator()
    sent: list[tuple[int, int, int]] = []
    accepted: set[tuple[int, int, int]] = set()
    t = T0
    for boot, seq, replay in genuine:
        if replay and sent:
            frame = rng.choice(sent)
        else:
            t += rng.randint(1, 20_000)
            frame = (boot, seq, t)
            sent.append(frame)
        if d.check("m", *frame).accept:
            assert frame not in accepted, frame
            accepted.add(frame)


def frame_of(device: str, boot: int, seq: int, unix_ms: int | None = None) -> bytes:
    f = Frame(device, boot, seq, seq * 1000, 1000,
              (Channel(0, 0, {"voltage": Stat(230_000, 229_000, 231_000)}),), unix_ms=unix_ms)
    return build_frame(f, device_key(device))


def test_a_refused_device_raises_one_alarm_and_a_resync_clears_it() -> None:
    v = Verifier({"m": Device(device_key("m"), generation="fp")}, Deduplicator())
    assert v.verify(frame_of("m", 5, 0), "t") is not None
    assert v.take_events() == []
    for s in range(3):  # the meter was reset and has no clock: boot 1 again
        assert v.verify(frame_of("m", 1, s), "t") is None
    (raised,) = v.take_events()  # one alarm, not one per frame
    assert (raised["kind"], raised["state"], raised["cause"]) == \
        ("replay_rejected", "raised", "replayed")
    assert (raised["accepted_boot"], raised["boot"]) == (5, 1)
    assert "gridedge-gateway devices resync m" in raised["hint"]
    assert v.rejected["replayed"] == 3
    v.set_devices({"m": Device(device_key("m"), generation="fp+1")})  # `devices resync m`, reloaded
    assert v.verify(frame_of("m", 1, 3), "t") is not None
    (cleared,) = v.take_events()
    assert (cleared["kind"], cleared["state"]) == ("replay_rejected", "cleared")


def test_a_reset_proven_by_the_clock_is_reported_not_refused() -> None:
    v = Verifier({"m": Device(device_key("m"), generation="fp")}, Deduplicator())
    assert v.verify(frame_of("m", 40, 9, T0), "t") is not None
    assert v.verify(frame_of("m", 1, 0, T0 + 60_000), "t") is not None
    (ev,) = v.take_events()
    assert (ev["kind"], ev["previous_boot"], ev["boot"]) == ("counter_reset", 40, 1)
    assert v.verify(frame_of("m", 40, 9, T0), "t") is None  # the old epoch, replayed


def test_the_documented_command_brings_a_reset_meter_back(
    tmp_path: Path, local: Mosquitto, cloud: Mosquitto
) -> None:
    """The real daemon: a meter without a clock comes back at boot 1. Its frames are
    refused, the cloud gets one replay_rejected alarm; `gridedge-gateway devices resync`
    and a reload (SIGHUP) let its next frames through, and the alarm clears."""
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, []))
    add = subprocess.run([sys.executable, "-m", "gateway.cli", "devices", "--config",
                          str(cfg), "add", "mtr-9", "--key-file", str(keyfile(tmp_path))],
                         capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)

    def seen() -> set[tuple[int, int]]:
        return {(r["boot"], r["seq"]) for p in capture.payloads("/readings")
                for r in json.loads(p)}

    def alarms() -> list[tuple[str, str]]:
        return [(a["kind"], a["state"]) for p in capture.payloads("/alarms")
                for a in json.loads(p) if a["kind"] == "replay_rejected"]

    try:
        for s in range(3):
            pub.publish("mtr-9", frame_of("mtr-9", 7, s))
        assert wait_for(lambda: len(seen()) == 3, 15)
        for s in range(3):  # factory reset, no clock: boot 1 again
            pub.publish("mtr-9", frame_of("mtr-9", 1, s))
        assert wait_for(lambda: alarms() == [("replay_rejected", "raised")], 15), alarms()
        resync = subprocess.run([sys.executable, "-m", "gateway.cli", "devices",
                                 "--config", str(cfg), "resync", "mtr-9"],
                                capture_output=True, text=True)
        assert resync.returncode == 0 and "resync 1" in resync.stdout, resync.stderr
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in (tmp_path / "gw.log").read_text(), 10)
        pub.publish("mtr-9", frame_of("mtr-9", 1, 3))
        assert wait_for(lambda: (1, 3) in seen(), 15), seen()
        assert wait_for(lambda: alarms() == [("replay_rejected", "raised"),
                                             ("replay_rejected", "cleared")], 15), alarms()
        assert seen() == {(7, 0), (7, 1), (7, 2), (1, 3)}  # nothing refused got through
    finally:
        pub.close()
        assert gw.terminate() == 0
        capture.close()


def keyfile(folder: Path) -> Path:
    path = folder / "mtr-9.key"
    path.write_text(device_key("mtr-9").hex() + "\n")
    return path
