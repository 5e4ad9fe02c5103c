"""A command's whole round trip: a control room on the cloud broker, the real gateway
process, its local broker, and the real firmware under MicroPython on a virtual board."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from gateway.command_auth import sign
from tests.support.brokers import Mosquitto
from tests.support.command_parts import GW, OPERATOR, Operator, public
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner
from tests.support.gateway_fixtures import GatewayProcess, config_text
from tests.support.mqtt_capture import Capture, wait_for
from tools.vboard import VirtualBoard


def start_gateway(tmp_path: Path, local: Mosquitto, cloud: Mosquitto,
                  serial_tty: str = "") -> tuple[GatewayProcess, Path]:
    """The real gateway process with commands on, for DEVICE (wired to ``serial_tty``
    when given), listening for requests."""
    extra = (f'[[devices]]\nid = "{DEVICE}"\nkey = "{KEY.hex()}"\nsite = "s"\nfeeder = "F1"\n'
             f'[commands]\nenabled = true\noperator_keys = ["{public(OPERATOR).hex()}"]\n')
    if serial_tty:
        extra += f'[[serial]]\nport = "{serial_tty}"\ndevice = "{DEVICE}"\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, [], extra=extra)
                   .replace('id = "gw-test"', f'id = "{GW}"'))
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    assert wait_for(lambda: "commands: listening" in log.read_text(), 10)
    return gw, log


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
    root = tmp_path / "meter"
    root.mkdir()
    meter = VirtualMeter(vboard, root, link="mqtt", mqtt_host="127.0.0.1",
                         mqtt_port=local.port, sample_interval_ms=100, report_interval_s=60)
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
    configured port for it): read, time and a timed relay switch go down the line in
    frames with the uplink's framing and CRC, and their results come back in its frames,
    at once."""
    root = tmp_path / "meter"
    root.mkdir()
    meter = VirtualMeter(vboard, root, sample_interval_ms=100, report_interval_s=60)
    tty = vboard.bridge_pty(meter.link_bus.name)
    gw, _log = start_gateway(tmp_path, local, cloud, serial_tty=tty)
    ops = Operator(cloud.port)
    proc = start_meter(fw_micropython, meter, vboard, 150)  # 15 s
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
    finally:
        proc.kill()
        proc.wait(10)
        ops.close()
        assert gw.terminate() == 0
