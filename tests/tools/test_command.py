"""``gridedge operator-key`` and ``gridedge command`` (tools/command.py) against a running
commander on real brokers: the exit status is the command's outcome."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.alarm import Alarm
from gateway.command_auth import key_id
from gateway.protocol import Channel, Frame
from tests.support.brokers import Mosquitto
from tests.support.command_parts import GW, OPERATOR, Meter, start_commander
from tests.support.fwrunner import firmware_module
from tests.support.gateway_fixtures import device_key
from tests.support.mqtt_capture import wait_for
from tools import cli

command = firmware_module("gemeter.command")


def test_an_operator_key_is_made_once_and_kept_private(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ops.key"
    assert cli.main(["operator-key", str(path)]) == 0
    private = bytes.fromhex(path.read_text().strip())
    public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    out = capsys.readouterr().out
    assert public.hex() in out and key_id(public) in out and private.hex() not in out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert cli.main(["operator-key", str(path)]) == 1  # never overwritten
    assert "never overwritten" in capsys.readouterr().err


def test_a_command_is_delivered_or_rejected_and_says_so(
        tmp_path: Path, local: Mosquitto, cloud: Mosquitto,
        capsys: pytest.CaptureFixture[str]) -> None:
    events: list[Alarm] = []
    c = start_commander(tmp_path, local, cloud, events)
    meter = Meter(local.port, "mtr-1")
    good, bad = tmp_path / "ops.key", tmp_path / "intruder.key"
    good.write_text(OPERATOR.hex())
    bad.write_text(bytes(32).hex())
    base = ["command", "--port", str(cloud.port), "--gateway", GW, "--device", "mtr-1",
            "--timeout", "10"]
    try:
        meter.status("online")
        assert wait_for(lambda: "mtr-1" in c.online, 10)
        # The fake meter cannot act: its result comes as the gateway would get it, in a
        # frame, once the command has reached it.
        def result() -> None:
            if wait_for(lambda: len(meter.got) == 1, 10):
                c.committed([Frame("mtr-1", 1, 9, 9000, 1000, (Channel(0, 0, {}),),
                                   results=((b"cli-1", "done", ""),))], {})
        threading.Thread(target=result, daemon=True).start()
        t0 = time.perf_counter()
        assert cli.main([*base, "--key-file", str(good), "--id", "cli-1", "relay",
                         "state=off", "seconds=900"]) == 0
        took = time.perf_counter() - t0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split('"state": ')[1].split('"')[1] for line in lines] == [
            "accepted", "delivered", "done"]
        assert wait_for(lambda: len(meter.got) == 1, 10)
        opened = command.Commands("mtr-1", device_key("mtr-1")).open(meter.got[0])
        assert opened["args"] == {"state": "off", "seconds": 900} and took < 5
        assert cli.main([*base, "--key-file", str(bad), "reboot"]) == 1
        assert '"reason": "unknown_operator"' in capsys.readouterr().out
        assert cli.main([*base, "--key-file", str(good), "relay", "state"]) == 1
        assert "name=value" in capsys.readouterr().err
    finally:
        meter.close()
        c.stop()
