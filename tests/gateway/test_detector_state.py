"""The detectors' learning kept across restarts (gateway/detector_state.py): a real file,
a real gateway process, and every way the file can be damaged on an SD card.

Before it, a restarted gateway forgot every series' daily profile: a day of judging with
the threshold doubled and no level shifts after each upgrade or reboot, and with the
first-day warm-up, a day of judging nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anomaly import AnomalyConfig, SeriesDetector
from gateway.calibration import ScoreTail
from gateway.detector_state import MAGIC, DetectorState, decode, encode
from gateway.seasonal import BINS, DailyProfile
from gateway.store import Store
from gateway.store_rows import ALARM, TELEMETRY
from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import DevicePublisher, GatewayProcess, config_text, frame
from tests.support.mqtt_capture import wait_for

CFG = AnomalyConfig(sensitivity=5.0)
T0 = 1_789_948_800


def trained(seed: int, points: int = 3 * 288) -> SeriesDetector:
    """A household load's detector after ``points`` 5-minute readings."""
    rng, det = random.Random(seed), SeriesDetector(CFG)
    for i in range(points):
        hour = i / 12 % 24
        det.observe((900 if 18 <= hour < 21 else 200) * rng.uniform(0.9, 1.1), 300, T0 + i * 300)
    return det


def test_a_restored_detector_judges_exactly_as_the_one_saved(tmp_path: Path) -> None:
    dets = {("mtr-1", 0, "power"): trained(1), ("mtr-2", 1, "voltage"): trained(2, 40)}
    state = DetectorState(tmp_path / "store.db.detectors")
    size = state.save(dets)
    assert size == state.bytes_written == (tmp_path / "store.db.detectors").stat().st_size
    back, problem = state.load(lambda qty: CFG)
    assert problem is None and back.keys() == dets.keys()
    rng = random.Random(9)
    for i in range(3 * 288, 4 * 288):
        x = 200 * rng.uniform(0.9, 1.1)  # a flat evening: the profile's anomaly
        for key in dets:
            assert dets[key].observe(x, 300, T0 + i * 300) == back[key].observe(x, 300,
                                                                                T0 + i * 300)
            assert dets[key].anomaly_score() == back[key].anomaly_score()


def valid(dets: dict[tuple[str, int, str], SeriesDetector]) -> bytes:
    return encode(dets)


def with_numbers(numbers: list[float]) -> bytes:
    """A file whose checksum holds but whose one detector's numbers are ``numbers``."""
    body = struct.pack("<B", 5) + b"mtr-1" + struct.pack("<BB", 0, 5) + b"power"
    body += struct.pack(f"<H{len(numbers)}d", len(numbers), *numbers)
    return struct.pack("<4sBII", MAGIC, 1, 1, zlib.crc32(body)) + body


GOOD = trained(3).state()
# Where the profile's days-seen counts start: after the means and spreads of every bin.
DAYS = len(GOOD) - 2 * ScoreTail.STATE_LEN - DailyProfile.STATE_LEN + 2 * BINS
DAMAGE = {
    "truncated": lambda b: b[:-100],
    "a flipped bit": lambda b: b[:60] + bytes([b[60] ^ 4]) + b[61:],
    "zeroed (a power cut on some cards)": lambda b: bytes(len(b)),
    "empty": lambda b: b"",
    "another version": lambda b: b[:4] + b"\x02" + b[5:],
    "a NaN level, checksum fixed": lambda b: with_numbers([GOOD[0], math.nan, *GOOD[2:]]),
    "a bin seen 300 days": lambda b: with_numbers([*GOOD[:DAYS], 300.0, *GOOD[DAYS + 1:]]),
    "one number short": lambda b: with_numbers(GOOD[:-1]),
    "a negative count": lambda b: with_numbers([-5.0, *GOOD[1:]]),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_file_is_set_aside_and_the_detectors_start_afresh(
        tmp_path: Path, damage: str) -> None:
    path = tmp_path / "store.db.detectors"
    path.write_bytes(DAMAGE[damage](valid({("mtr-1", 0, "power"): trained(3)})))
    back, problem = DetectorState(path).load(lambda qty: CFG)
    assert back == {} and problem is not None and "moved to" in problem
    assert not path.exists() and (tmp_path / "store.db.detectors.corrupt").exists()


@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_to_detectors_or_a_value_error(data: bytes) -> None:
    for candidate in (data, MAGIC + b"\x01" + data[:8] + data):
        with contextlib.suppress(ValueError, struct.error):
            decode(candidate, lambda qty: CFG)


def test_a_folder_that_cannot_be_written_costs_nothing_but_a_log(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    state = DetectorState(folder / "store.db.detectors")
    state.keep({("mtr-1", 0, "power"): trained(4, 10)}, force=True)
    assert state.failures == 1 and state.saves == 0 and state.bytes_written == 0


def stored(db: Path) -> int:
    """Readings in a running gateway's store (read-only: the gateway owns it)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return int(c.execute("SELECT count(*) FROM records WHERE priority = ?",
                                 (TELEMETRY,)).fetchone()[0])
    except sqlite3.Error:
        return 0


def test_the_gateway_keeps_its_detectors_across_a_restart(tmp_path: Path,
                                                          local: Mosquitto) -> None:
    """A real gateway: frames in, SIGTERM, the file; a second start restores them. A
    damaged file instead: the gateway starts, sets it aside and stores one
    ``detector_state_lost`` event."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-a"]))
    saved = tmp_path / "state" / "store.db.detectors"
    pub = DevicePublisher(local.port)
    try:
        gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
        for seq in range(5):
            pub.publish("mtr-a", frame("mtr-a", seq))
        assert wait_for(lambda: stored(tmp_path / "state" / "store.db") == 5, 10)
        assert gw.terminate() == 0
        kept = decode(saved.read_bytes(), lambda qty: CFG)
        assert {k[0] for k in kept} == {"mtr-a"} and all(d.n == 5 for d in kept.values())
        gw = GatewayProcess(cfg, tmp_path / "gw2.log").start(wait_subscribed=True)
        assert wait_for(lambda: f"detectors: {len(kept)} restored"
                        in (tmp_path / "gw2.log").read_text(), 5)
        assert gw.terminate() == 0
        saved.write_bytes(b"GEDS\x01" + os.urandom(200))
        gw = GatewayProcess(cfg, tmp_path / "gw3.log").start(wait_subscribed=True)
        assert gw.terminate() == 0
    finally:
        pub.close()
    assert (tmp_path / "state" / "store.db.detectors.corrupt").exists()
    rows = Store(tmp_path / "state" / "store.db", max_bytes=10**8, max_age_s=3600) \
        .fetch(ALARM, 0, 100)
    assert [r.body.count(b"detector_state_lost") > 0 for r in rows].count(True) == 1
