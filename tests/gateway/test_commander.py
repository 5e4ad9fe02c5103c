"""Commands from a real cloud broker to a device on a real local broker, through the
gateway's commander (gateway/commander.py): signed requests are queued durably, delivered
sealed when the device is online and answered on the MQTT 5 response topic; the rest is
refused, counted and reported."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.alarm import Alarm
from gateway.command_auth import sign
from gateway.commander import Commander
from gateway.config import SerialPort
from gateway.framing import Deframer
from gateway.inbox import Inbox
from gateway.ingest_serial import SerialIngest
from gateway.protocol import FrameDecoder
from tests.support.brokers import Mosquitto
from tests.support.command_parts import GW, OPERATOR, Meter, Operator, start_commander
from tests.support.fwrunner import firmware_module
from tests.support.gateway_fixtures import Line, device_key, frame
from tests.support.mqtt_capture import wait_for

command = firmware_module("gemeter.command")


@pytest.fixture
def parts(tmp_path: Path, local: Mosquitto, cloud: Mosquitto
          ) -> Iterator[tuple[Commander, Operator, list[Alarm]]]:
    events: list[Alarm] = []
    c = start_commander(tmp_path, local, cloud, events)
    ops = Operator(cloud.port)
    yield c, ops, events
    ops.close()
    c.stop()


def signed(cid: str, device: str = "mtr-1", op: str = "relay", expires_in_s: float = 60,
           **args: Any) -> dict[str, Any]:
    return sign(OPERATOR, GW, cid, device, op, args or ({"state": "off", "seconds": 900}
                                                         if op == "relay" else {}),
                int((time.time() + expires_in_s) * 1000))


def test_a_signed_command_reaches_the_online_meter_sealed_for_it(
        parts: tuple[Commander, Operator, list[Alarm]], local: Mosquitto) -> None:
    c, ops, _events = parts
    meter = Meter(local.port, "mtr-1")
    try:
        meter.status("online")
        assert wait_for(lambda: "mtr-1" in c.online, 10)
        ops.send(signed("c1"), correlation=b"corr-1")
        assert wait_for(lambda: ops.states("c1") == ["accepted", "delivered"], 10), ops.answers
        assert all(t == "ops/replies" and corr == b"corr-1" for t, a, corr in ops.answers)
        assert wait_for(lambda: len(meter.got) == 1, 10)
        opened = command.Commands("mtr-1", device_key("mtr-1")).open(meter.got[0],
                                                                      int(time.time() * 1000))
        assert (opened["op"], opened["id"], opened["args"]) == (
            "relay", b"c1", {"state": "off", "seconds": 900})
        ops.send(signed("c1"))  # the same id again: answered, not queued twice
        assert wait_for(lambda: ops.states("c1")[2:] == ["delivered"], 10), ops.answers
        time.sleep(0.3)
        assert len(meter.got) == 1 and c.counts["repeated"] == 1
    finally:
        meter.close()


def test_a_burst_of_commands_is_delivered_whole(
        parts: tuple[Commander, Operator, list[Alarm]], local: Mosquitto) -> None:
    """Rounds of update chunks as ``gridedge update`` sends them, the meter acknowledging
    each at once: every one delivered. The PUBACKs of earlier ones come while the next
    are being published; the commander used to wait for its own lock inside paho's
    acknowledgement callback, while holding that lock it waited in publish() for paho's:
    the gateway stopped delivering for good, and would not stop."""
    c, ops, _events = parts
    meter = Meter(local.port, "mtr-1")
    try:
        meter.status("online")
        assert wait_for(lambda: "mtr-1" in c.online, 10)
        data = base64.b64encode(bytes(256)).decode()
        for r in range(12):
            ids = [f"b{r}-{i}" for i in range(4)]
            for i, cid in enumerate(ids):
                ops.send(signed(cid, op="update-chunk", at=(4 * r + i) * 256, data=data))
            assert wait_for(lambda ids=ids: all(ops.states(cid) == ["accepted", "delivered"]
                                                for cid in ids), 10), (r, ops.answers[-8:])
        assert len(meter.got) == 48 and all(len(m) < 512 for m in meter.got)
    finally:
        meter.close()


def test_unsigned_and_forged_commands_are_refused_counted_and_reported(
        parts: tuple[Commander, Operator, list[Alarm]]) -> None:
    c, ops, events = parts
    forged = signed("c2")
    forged["args"] = {"state": "on", "seconds": 900}  # changed after signing
    unsigned = {k: v for k, v in signed("c3").items() if k != "signature"}
    intruder = sign(bytes(32), GW, "c4", "mtr-1", "reboot", {}, int(time.time() * 1000) + 60_000)
    for request in (forged, unsigned, intruder):
        ops.send(request)
    ops.send(b"not json")
    assert wait_for(lambda: len(ops.answers) == 4, 10), ops.answers
    assert [a["reason"] for _t, a, _c in ops.answers] == [
        "bad_signature", "unsigned", "unknown_operator", "malformed"]
    assert all(a["state"] == "rejected" for _t, a, _c in ops.answers)
    assert dict(c.refused) == {"bad_signature": 1, "unsigned": 1, "unknown_operator": 1,
                               "malformed": 1}
    assert [(e.kind, e.evidence["reason"]) for e in events] == [
        ("command_rejected", "bad_signature"), ("command_rejected", "unsigned"),
        ("command_rejected", "unknown_operator")]
    assert c.queue.counts() == {}


def test_an_offline_meter_gets_its_command_when_it_comes_back_even_after_a_restart(
        tmp_path: Path, local: Mosquitto, cloud: Mosquitto) -> None:
    """Queued for an offline meter, then the gateway restarts; the meter comes online and
    gets it. Another command for it expires meanwhile and is answered so."""
    events: list[Alarm] = []
    c = start_commander(tmp_path, local, cloud, events)
    ops = Operator(cloud.port)
    meter = Meter(local.port, "mtr-2")
    try:
        meter.status("offline")
        ops.send(signed("late", "mtr-2", "reboot"))
        ops.send(signed("soon", "mtr-2", "time", expires_in_s=1.5))
        assert wait_for(lambda: ops.states("late") == ["accepted"]
                        and ops.states("soon") == ["accepted"], 10)
        assert wait_for(lambda: ops.states("soon") == ["accepted", "expired"], 10)
        c.stop()
        c = start_commander(tmp_path, local, cloud, events)
        assert ops.states("late") == ["accepted"] and meter.got == []
        meter.status("online")
        assert wait_for(lambda: ops.states("late") == ["accepted", "delivered"], 10)
        assert wait_for(lambda: len(meter.got) == 1, 10)
        opened = command.Commands("mtr-2", device_key("mtr-2")).open(meter.got[0])
        assert opened["op"] == "reboot" and opened["id"] == b"late"
    finally:
        meter.close()
        ops.close()
        c.stop()


def test_a_wired_meter_gets_its_command_down_its_serial_line_until_it_answers(
        tmp_path: Path, local: Mosquitto, cloud: Mosquitto) -> None:
    """A meter on a serial port (a real pty) configured with its id: its command waits
    until the port is open, goes down it framed (COBS, CRC), is sent again with the same
    id and counter while no result comes, and no more once one has."""
    line = Line(tmp_path / "ttyMETER")
    reader = SerialIngest(SerialPort(port=str(line.link), device="mtr-1"), Inbox())
    events: list[Alarm] = []
    c = start_commander(tmp_path, local, cloud, events, wired={"mtr-1": reader},
                        redeliver_s=1.0)
    ops = Operator(cloud.port)
    try:
        ops.send(signed("w1"))
        assert wait_for(lambda: ops.states("w1") == ["accepted"], 10)
        time.sleep(1.5)  # the gateway has not opened the port: not sent
        assert line.read() == b"" and ops.states("w1") == ["accepted"]
        reader.start()
        assert wait_for(lambda: ops.states("w1") == ["accepted", "delivered"], 10)
        cmds = command.Commands("mtr-1", device_key("mtr-1"))
        first = wait_for_commands(line, 1)
        opened = cmds.open(first[0], int(time.time() * 1000))
        assert (opened["op"], opened["id"]) == ("relay", b"w1")
        again = wait_for_commands(line, 1)  # no result came: sent again, the same command
        assert command.Commands("mtr-1", device_key("mtr-1")).open(again[0])["counter"] == \
            opened["counter"]
        with pytest.raises(command.CommandError, match="duplicate"):
            cmds.open(again[0])  # the meter runs it once
        result = FrameDecoder({"mtr-1": device_key("mtr-1")}).decode(frame("mtr-1", 1))
        c.committed([dataclasses.replace(result, results=((b"w1", "done", ""),))], c.devices)
        assert wait_for(lambda: ops.states("w1") == ["accepted", "delivered", "done"], 10)
        line.read()
        time.sleep(2.5)
        assert line.read() == b""  # answered: not sent again
        assert c.counts["redelivered"] >= 1 and reader.sent >= 2
    finally:
        ops.close()
        c.stop()
        reader.stop()


def wait_for_commands(line: Line, n: int) -> list[bytes]:
    """The next n messages the gateway writes down the line (each after a 0x00)."""
    got: list[bytes] = []
    deframer = Deframer()

    def more() -> bool:
        got.extend(m for m in deframer.feed(line.read()) if isinstance(m, bytes))
        return len(got) >= n

    assert wait_for(more, 10), got
    return got
