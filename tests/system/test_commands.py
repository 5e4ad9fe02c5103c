"""A command's whole round trip: a control room on the cloud broker, the real gateway
process, its local broker, and the real firmware under MicroPython on a virtual board."""

from __future__ import annotations

import json
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


def test_read_goes_down_and_its_result_comes_back_up(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    extra = (f'[[devices]]\nid = "{DEVICE}"\nkey = "{KEY.hex()}"\nsite = "s"\nfeeder = "F1"\n'
             f'[commands]\nenabled = true\noperator_keys = ["{public(OPERATOR).hex()}"]\n')
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, [], extra=extra)
                   .replace('id = "gw-test"', f'id = "{GW}"'))
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    alarms = Capture(cloud.port, topic=f"gridedge/v1/gw/{GW}/alarms")
    ops = Operator(cloud.port)
    root = tmp_path / "meter"
    root.mkdir()
    meter = VirtualMeter(vboard, root, link="mqtt", mqtt_host="127.0.0.1",
                         mqtt_port=local.port, sample_interval_ms=100, report_interval_s=60)
    proc = fw_micropython.start(SCRIPTS / "app_run.py", env=vboard.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(meter.request(150)))  # 15 s
    proc.stdin.close()
    try:
        assert wait_for(lambda: "commands: listening" in log.read_text(), 10)
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
