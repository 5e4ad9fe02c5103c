"""A command's whole round trip: a control room on the cloud broker, the real gateway
process, its local broker, and the real firmware under MicroPython on a virtual board."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.command_auth import sign
from gateway.registry import fingerprint
from tests.support.brokers import Mosquitto, free_port
from tests.support.command_parts import GW, OPERATOR, Operator, start_gateway
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner
from tests.support.gateway_fixtures import frame, metrics
from tests.support.mqtt_capture import Capture, wait_for
from tools.vboard import VirtualBoard


def mqtt_meter(vboard: VirtualBoard, tmp_path: Path, local: Mosquitto,
               **cfg: object) -> VirtualMeter:
    root = tmp_path / "meter"
    root.mkdir()
    return VirtualMeter(vboard, root, link="mqtt", mqtt_host="127.0.0.1",
                        mqtt_port=local.port, **cfg)


def start_meter(fw: FirmwareRunner, meter: VirtualMeter, vboard: VirtualBoard,
                cycles: int) -> subprocess.Popen[str]:
    proc = fw.start(SCRIPTS / "app_run.py", env=vboard.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(meter.request(cycles)))
    proc.stdin.close()
    return proc


def test_read_goes_down_and_its_result_comes_back_up(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    gw, _log = start_gateway(tmp_path, local, cloud)
    alarms = Capture(cloud.port, topic=f"gridedge/v1/gw/{GW}/alarms")
    ops = Operator(cloud.port)
    meter = mqtt_meter(vboard, tmp_path, local, sample_interval_ms=100, report_interval_s=60)
    proc = start_meter(fw_micropython, meter, vboard, 150)  # 15 s
    try:
        t0 = time.monotonic()
        ops.send(sign(OPERATOR, GW, "rt-1", DEVICE, "read", {},
                      int(time.time() * 1000) + 60_000), correlation=b"rt")
        assert wait_for(lambda: ops.states("rt-1") == ["accepted", "delivered", "done"], 20), \
            ops.answers
        took = time.monotonic() - t0
        assert took < 10, took  # the meter's period is 60 s: the result did not wait for it
        assert all(c == b"rt" for _t, _a, c in ops.answers)
        assert alarms.wait(lambda: any(b"command_results" in p for p in alarms.payloads(
            "/alarms")), 10)
        (event,) = [r for p in alarms.payloads("/alarms") for r in json.loads(p)
                    if r["kind"] == "command_results"]
        assert event["device"] == DEVICE and event["results"] == [{"id": "rt-1",
                                                                   "state": "done"}]
        # time: the gateway seals its own clock into the command; the meter's result
        # says what it corrected (the unix port's host clock: about nothing).
        ops.send(sign(OPERATOR, GW, "rt-2", DEVICE, "time", {},
                      int(time.time() * 1000) + 60_000))
        assert wait_for(lambda: ops.states("rt-2") == ["accepted", "delivered", "done"], 20), \
            ops.answers
        (answer,) = [a for _t, a, _c in ops.answers if a["id"] == "rt-2" and
                     a["state"] == "done"]
        assert answer["reason"].startswith("offset ") and \
            abs(int(answer["reason"].split()[1])) < 2000, answer
    finally:
        proc.kill()
        proc.wait(10)
        ops.close()
        alarms.close()
        assert gw.terminate() == 0


def test_a_damaged_queue_is_set_aside_and_reported(
        tmp_path: Path, local: Mosquitto, cloud: Mosquitto) -> None:
    """A commands.db the medium damaged: the gateway starts with a new queue, and the
    cloud hears of it (the commands waiting in it are gone)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "commands.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    alarms = Capture(cloud.port, topic=f"gridedge/v1/gw/{GW}/alarms")
    gw, log = start_gateway(tmp_path, local, cloud)
    try:
        assert alarms.wait(lambda: any(b"command_queue_lost" in p for p in alarms.payloads(
            "/alarms")), 15)
        (event,) = [r for p in alarms.payloads("/alarms") for r in json.loads(p)
                    if r["kind"] == "command_queue_lost"]
        assert "moved to commands.db.corrupt-" in event["detail"], event
        assert list(state.glob("commands.db.corrupt-*")) and "queue starts empty" in \
            log.read_text()
    finally:
        alarms.close()
        assert gw.terminate() == 0


def test_commands_go_down_the_serial_line_and_their_results_come_back_up(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    """The meter on a wired serial link (its UART bridged to a real pty, the gateway's
    configured port for it): read, time, a timed relay switch and a key rotation go down
    the line in frames with the uplink's framing and CRC, and their results come back in
    its frames, at once."""
    root = tmp_path / "meter"
    root.mkdir()
    meter = VirtualMeter(vboard, root, sample_interval_ms=100, report_interval_s=60)
    tty = vboard.bridge_pty(meter.link_bus.name)
    gw, _log = start_gateway(tmp_path, local, cloud, serial_tty=tty)
    ops = Operator(cloud.port)
    proc = start_meter(fw_micropython, meter, vboard, 250)  # 25 s
    try:
        expires = int(time.time() * 1000) + 60_000
        t0 = time.monotonic()
        ops.send(sign(OPERATOR, GW, "sr-1", DEVICE, "read", {}, expires))
        assert wait_for(lambda: ops.states("sr-1") == ["accepted", "delivered", "done"], 20), \
            ops.answers
        assert time.monotonic() - t0 < 10  # not the 60-s period: the result went up at once
        ops.send(sign(OPERATOR, GW, "sr-2", DEVICE, "time", {}, expires))
        assert wait_for(lambda: ops.states("sr-2") == ["accepted", "delivered", "done"], 20), \
            ops.answers
        ops.send(sign(OPERATOR, GW, "sr-3", DEVICE, "relay", {"state": "off", "seconds": 2},
                      expires))
        assert wait_for(lambda: ops.states("sr-3") == ["accepted", "delivered", "done"],
                        20), [a for _t, a, _c in ops.answers if a["id"] == "sr-3"]
        # A new key down the line, and a read sent right behind it: the gateway holds the
        # read back until the meter's frames show the new key, and seals it with that.
        t0 = time.monotonic()
        for cid, op in (("sr-4", "key-rotate"), ("sr-5", "read")):
            ops.send(sign(OPERATOR, GW, cid, DEVICE, op, {}, expires))
        for cid in ("sr-4", "sr-5"):
            assert wait_for(lambda cid=cid: ops.states(cid) == ["accepted", "delivered",
                                                                 "done"], 20), ops.answers
        assert time.monotonic() - t0 < 10  # not after a re-delivery (20 s)
        assert (meter.root / "key.bin").read_bytes() != KEY
    finally:
        proc.kill()
        proc.wait(10)
        ops.close()
        assert gw.terminate() == 0


def test_key_rotation_under_load_rejects_and_loses_nothing(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    """A meter reporting every second over MQTT is given a new key twice while another
    device floods the gateway with 200 frames a second. Every frame of both reaches the
    cloud, in order and without a gap, none is rejected, and the meter ends on the key the
    gateway last made (the result names its fingerprint)."""
    port = free_port()
    gw, log = start_gateway(tmp_path, local, cloud, metrics_port=port, devices=("mtr-load",))
    readings = Capture(cloud.port, topic=f"gridedge/v1/gw/{GW}/readings")
    ops = Operator(cloud.port)
    meter = mqtt_meter(vboard, tmp_path, local, sample_interval_ms=50, report_interval_s=1)
    proc = start_meter(fw_micropython, meter, vboard, 400)  # 20 s
    load = Flood(local.port, "mtr-load", per_s=200)
    try:
        time.sleep(4)  # frames under the provisioned key first
        reasons = []
        for n in (1, 2):
            ops.send(sign(OPERATOR, GW, f"rot-{n}", DEVICE, "key-rotate", {},
                          int(time.time() * 1000) + 60_000))
            assert wait_for(lambda n=n: "done" in ops.states(f"rot-{n}"), 20), ops.answers
            (done,) = [a for _t, a, _c in ops.answers if a["id"] == f"rot-{n}" and
                       a["state"] == "done"]
            reasons.append(done["reason"])
            time.sleep(3)  # and under the new one
        assert proc.wait(40) == 0
        load.stop()
        sent = load.sent
        assert wait_for(lambda: seqs(readings, "mtr-load") == list(range(sent)), 20), \
            (sent, len(seqs(readings, "mtr-load")))
        mine = seqs(readings, DEVICE)
        assert mine == list(range(len(mine))) and len(mine) >= 15, mine
        m = metrics(port)
        assert not {k: v for k, v in m.items()
                    if k.startswith("gridedge_frames_rejected_total") and v}, m
        assert reasons[0] != reasons[1] and reasons[1] == "key " + fingerprint(
            (meter.root / "key.bin").read_bytes())
        assert "uses its new key now" in log.read_text()
    finally:
        load.stop()
        if proc.poll() is None:
            proc.kill()
        ops.close()
        readings.close()
        assert gw.terminate() == 0


def seqs(capture: Capture, device: str) -> list[int]:
    """The seqs of a device's readings the cloud got, sorted, each once."""
    return sorted({r["seq"] for p in capture.payloads("/readings") for r in json.loads(p)
                   if r["device"] == device})


class Flood:
    """Another device's frames at a steady rate into the local broker, QoS 1."""

    def __init__(self, port: int, device: str, per_s: float) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{device}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.device, self.per_s, self.sent = device, per_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.client.publish(f"gridedge/v1/dev/{self.device}/frame",
                                frame(self.device, self.sent),
                                qos=1).wait_for_publish(10)
            self.sent += 1
            time.sleep(max(0.0, t0 + self.sent / self.per_s - time.monotonic()))

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self.client.loop_stop()
        self.client.disconnect()
