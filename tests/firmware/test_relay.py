"""The board's relay (firmware/gemeter/relay.py): switched by a sealed command over MQTT,
a timed switch restored on its own, the emulated load following it, and the fail-safe at a
restart. Under both interpreters, on a real broker and a virtual board."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from gateway.command import Command
from gateway.protocol import Frame, FrameDecoder
from tests.support.brokers import Mosquitto
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner
from tests.support.mqtt_capture import Capture
from tools.vboard import VirtualBoard

PIN = "pin25"  # boards/esp32-devkitc.json: relays.load, closed at level 1


def decode(payloads: list[bytes]) -> list[Frame]:
    decoder = FrameDecoder({DEVICE: KEY})
    return [decoder.decode(p) for p in payloads]


def wire_load(vboard: VirtualBoard, meter: VirtualMeter) -> list[tuple[float, int]]:
    """The relay feeds the PZEM's circuit: open, it measures nothing."""
    seen: list[tuple[float, int]] = []

    def switched(level: int) -> None:
        seen.append((time.monotonic(), level))
        meter.pzem.set_reading(voltage=230.4, current=4.2 * level, power=950.0 * level,
                               pf=0.98 if level else 1.0)
    vboard.on_pin(PIN, switched)
    return seen


def test_a_timed_relay_switch_cuts_the_load_and_restores_it(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    meter = VirtualMeter(vboard, tmp_path, link="mqtt", mqtt_host="127.0.0.1",
                         mqtt_port=mosquitto.port, sample_interval_ms=100, report_interval_s=1)
    seen = wire_load(vboard, meter)
    capture = Capture(mosquitto.port)
    proc = fw.start(SCRIPTS / "app_run.py", env=vboard.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(meter.request(90)))  # 9 s
    proc.stdin.close()
    try:
        assert capture.wait(lambda: b"online" in capture.payloads("/status"), 20)
        assert seen and seen[-1][1] == 1  # closed at start
        sent = time.monotonic()
        capture.client.publish(f"gridedge/v1/dev/{DEVICE}/cmd", Command(
            DEVICE, 1, int(time.time() * 1000) + 60_000, b"dr-1", "relay",
            {"state": "off", "seconds": 2}).seal(KEY), qos=1).wait_for_publish(10)
        assert capture.wait(lambda: [lv for _t, lv in seen][-2:] == [0, 1], 15), seen
    finally:
        assert proc.wait(60) == 0
    frames = decode(capture.payloads("/frame"))
    capture.close()
    off, on = (t for t, lv in seen[-2:])
    assert 0 < off - sent < 2.0 and 1.8 < on - off < 3.5, (sent, seen)
    assert [r for f in frames for r in f.results] == [(b"dr-1", "done", "")]
    powers = [f.channels[0].values["power"].mean for f in frames]
    assert 0 in powers and powers[-1] == 950_000  # mW: the load was cut, and is back
    # Every frame says the relay's state as it was built: closed, open from the result's
    # frame (sent at once) on, closed again once the 2 s are over.
    states = [dict(f.relays)["load"] for f in frames]
    opened = [bool(f.results) for f in frames].index(True)
    assert all(states[:opened]) and not states[opened] and states[-1], states
    newest = max((json.loads(p.read_text().split("\n")[0]) for p in
                  tmp_path.glob("state.*.json")), key=lambda r: r["n"])
    assert newest["relay"] == {"load": [True, None]} and newest["cmd"] == 1, newest


def test_a_restart_ends_a_pending_timed_switch_but_keeps_a_lasting_one(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """A power cut in the middle of a 15-minute off: the load comes back at the start
    (the board cannot know how long it was off); an off without a time stays off."""
    for saved, level in (([False, True], 1), ([False, None], 0)):
        root = tmp_path / str(level)
        root.mkdir()
        meter = VirtualMeter(vboard, root)
        seen = wire_load(vboard, meter)
        line = json.dumps({"n": 1, "boot": 4, "energy_mwh": {}, "cmd": 9,
                           "relay": {"load": saved}}).encode()
        (root / "state.a.json").write_bytes(
            line + b"\n" + hashlib.sha256(line).hexdigest()[:8].encode() + b"\n")
        stats = fw.run_json("app_run.py", meter.request(3), env=vboard.env())
        assert stats["boot"] == 5 and [lv for _t, lv in seen] == [level], (saved, seen)
