"""The whole path with the real firmware: MicroPython meter -> gateway -> cloud subscriber.

Two meters run the unmodified firmware under the MicroPython unix port on virtual boards
(emulated PZEM-004T and ADE7953): one publishes over MQTT to the gateway's local broker,
the other writes COBS frames to a UART bridged to a pty that the gateway reads with
pyserial. The cloud subscriber must see every frame of both, once, in SI units.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner
from tests.support.gateway_fixtures import LOCAL_BROKER_EXTRA, GatewayProcess, config_text
from tests.support.mqtt_capture import Capture, wait_for
from tools.vboard import VirtualBoard


def test_real_firmware_over_mqtt_and_serial_reaches_the_cloud(
    fw_micropython: FirmwareRunner, tmp_path: Path
) -> None:
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    cloud = Mosquitto(tmp_path / "cloud").start()
    mqtt_board = VirtualBoard(str(tmp_path / "vb-mqtt.sock")).start()
    serial_board = VirtualBoard(str(tmp_path / "vb-serial.sock")).start()
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    gw: GatewayProcess | None = None
    try:
        (tmp_path / "m1").mkdir()
        (tmp_path / "m2").mkdir()
        over_mqtt = VirtualMeter(mqtt_board, tmp_path / "m1", link="mqtt",
                                 mqtt_host="127.0.0.1", mqtt_port=local.port,
                                 sample_interval_ms=100, report_interval_s=1)
        over_serial = VirtualMeter(serial_board, tmp_path / "m2", sample_interval_ms=100,
                                   report_interval_s=1, device_id="mtr-serial-02")
        tty = serial_board.bridge_pty("uart1")  # the board file's gateway UART
        cfg = tmp_path / "gw.toml"
        cfg.write_text(config_text(tmp_path / "state", local, cloud, [])
                       + f'[[serial]]\nport = "{tty}"\n'
                       + f'[[devices]]\nid = "{DEVICE}"\nkey = "{KEY.hex()}"\nsite = "s"\n'
                       + f'[[devices]]\nid = "mtr-serial-02"\nkey = "{KEY.hex()}"\n')
        gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
        a = fw_micropython.start(SCRIPTS / "app_run.py",
                                 env=mqtt_board.env())
        b = fw_micropython.start(SCRIPTS / "app_run.py",
                                 env=serial_board.env())
        for proc, meter in ((a, over_mqtt), (b, over_serial)):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(meter.request(30)))
            proc.stdin.close()
        assert a.wait(60) == 0 and b.wait(60) == 0

        def readings() -> list[dict[str, object]]:
            return [r for p in capture.payloads("/readings") for r in json.loads(p)]

        assert wait_for(lambda: len(readings()) >= 6, 20), (tmp_path / "gw.log").read_text()
        got = readings()
        assert sorted((str(r["device"]), r["seq"]) for r in got) == sorted(
            [(DEVICE, s) for s in range(3)] + [("mtr-serial-02", s) for s in range(3)])
        first = next(r for r in got if r["device"] == DEVICE)
        channels = first["channels"]
        assert isinstance(channels, list)
        assert channels[0]["voltage_v"]["mean"] == 230.4 and first["site"] == "s"
        assert channels[0]["status"] == []
    finally:
        if gw is not None:
            gw.terminate()
        capture.close()
        mqtt_board.stop()
        serial_board.stop()
        local.stop()
        cloud.stop()
