"""`gridedge monitor`: the model (de-dup, bad channels, alarms, staleness, sparklines), one
rendered frame, and the command end to end against a real Mosquitto and the real gateway."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console

from gateway.payloads import iso_ms
from tests.support.brokers import Mosquitto, free_port
from tests.support.certs import make_pki
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
)
from tests.support.mqtt_capture import wait_for
from tools.monitor_model import BLOCKS, MonitorState, sparkline
from tools.monitor_view import render

T0 = 1_700_000_000.0
BASE = "gridedge/v1/gw/gw-1"


def reading(device: str, seq: int, t: float = T0, watts: float = 1150.0, boot: int = 1,
            flags: tuple[str, ...] = (), period_ms: int = 10_000) -> dict[str, Any]:
    ch: dict[str, Any] = {"channel": 0, "name": "main", "status": list(flags)}
    if "invalid" not in flags:
        ch.update({"voltage_v": {"mean": 230.1, "min": 229.0, "max": 231.0},
                   "current_a": {"mean": 5.0, "min": 4.0, "max": 6.0},
                   "power_w": {"mean": watts, "min": watts - 100, "max": watts + 100},
                   "power_factor": 0.99, "frequency_hz": 50.0, "energy_wh": 1234})
    return {"device": device, "boot": boot, "seq": seq, "uptime_ms": 1000 * seq,
            "time": iso_ms(int(t * 1000)), "period_ms": period_ms, "site": "sub-12",
            "feeder": "F3", "channels": [ch]}


def alarm(state: str, kind: str = "over_voltage", device: str = "mtr-0001", t: float = T0,
          **evidence: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "alarm", "state": state, "kind": kind, "device": device,
                           "time": iso_ms(int(t * 1000)), "site": "sub-12", "feeder": "F3",
                           "channel": 0, **evidence}
    rec["id"] = f"{kind}:{state}:{device}:F3:0:{rec['time']}"
    return rec


def feed(state: MonitorState, kind: str, body: object, now: float = T0) -> None:
    state.feed(f"{BASE}/{kind}", json.dumps(body).encode(), "application/json", now)


def health(delivered: int = 836, t: float = T0) -> dict[str, Any]:
    return {"gateway": "gw-1", "time": iso_ms(int(t * 1000)),
            "store": {"alarms": 1, "telemetry": 12, "bytes": 49152, "oldest_age_s": 0.4},
            "ingest": {"accepted": 840, "rejected": {"bad_mac": 2}, "missing": 3},
            "open_alarms": 1, "uplink": {"connects": 2, "delivered": delivered,
                                         "inflight": 1}}


def frame_text(state: MonitorState, now: float = T0, height: int = 40) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(render(state, now, height=height))
    return console.export_text()


# -- model ----------------------------------------------------------------------------
def test_resent_readings_count_once_and_late_ones_do_not_replace_newer() -> None:
    s = MonitorState()
    batch = [reading("mtr-0001", 1, watts=100), reading("mtr-0001", 2, watts=200)]
    feed(s, "readings", batch)
    feed(s, "readings", batch)  # a QoS 1 resend of the whole message
    dev = s.devices["mtr-0001"]
    assert s.counts["readings"] == 2 and s.counts["duplicates"] == 2
    assert list(dev.channels[0].history) == [100, 200]
    feed(s, "readings", [reading("mtr-0001", 0, watts=50)])  # late, after seq 2
    assert s.counts["late"] == 1 and dev.seq == 2
    assert dev.channels[0].values["power_w"] == 200


def test_dedup_window_is_bounded() -> None:
    s = MonitorState(dedup_window=3)
    for seq in range(5):
        feed(s, "readings", [reading("mtr-0001", seq)])
    assert len(s._readings._keys) == 3


def test_invalid_channel_shows_no_previous_values() -> None:
    s = MonitorState()
    feed(s, "readings", [reading("mtr-0001", 1, watts=987.0)])
    feed(s, "readings", [reading("mtr-0001", 2, flags=("invalid", "timeout"))], T0 + 1)
    ch = s.devices["mtr-0001"].channels[0]
    assert not ch.valid and ch.values == {} and ch.flags == ["invalid", "timeout"]
    assert list(ch.history) == [987.0, None]
    row = next(line for line in frame_text(s, T0 + 1).splitlines() if "mtr-0001" in line)
    assert "—" in row and "invalid timeout" in row
    assert "987" not in row and "230.1" not in row


def test_alarms_raise_clear_and_resends_are_ignored() -> None:
    s = MonitorState()
    raised = alarm("raised", value=254.1, threshold=253.0)
    feed(s, "alarms", [raised])
    feed(s, "alarms", [raised])  # resent
    ntl = {"type": "alarm", "state": "raised", "kind": "non_technical_loss", "device": "",
           "feeder": "F3", "time": iso_ms(int(T0 * 1000)), "loss": 0.12, "line_wh": 100.0}
    feed(s, "alarms", [ntl])
    assert set(s.open_alarms) == {("over_voltage", "mtr-0001", "0", ""),
                                  ("non_technical_loss", "F3", "", "")}
    assert len(s.log) == 2 and s.counts["duplicates"] == 1
    # Raised again (a gateway restart): still one alarm, open since the first time.
    feed(s, "alarms", [alarm("raised", t=T0 + 50, value=255.0, threshold=253.0)])
    assert s.open_alarms[("over_voltage", "mtr-0001", "0", "")].time == T0
    feed(s, "alarms", [alarm("cleared", t=T0 + 60, value=240.0, threshold=253.0)])
    assert set(s.open_alarms) == {("non_technical_loss", "F3", "", "")}
    assert [a.state for a in s.log] == ["raised", "raised", "raised", "cleared"]
    assert s.open_alarms[("non_technical_loss", "F3", "", "")].where == "feeder F3"


def test_gap_events_go_to_recent_events_and_findings_open_per_quantity() -> None:
    s = MonitorState(events_size=2)
    gap = {"type": "event", "state": "event", "kind": "gap", "device": "mtr-0002",
           "time": iso_ms(int(T0 * 1000)), "boot": 1, "seq": 33, "missing": 2}
    feed(s, "alarms", [gap])
    assert not s.open_alarms and [e.kind for e in s.events] == ["gap"]
    assert s.events[0].evidence == {"boot": 1, "seq": 33, "missing": 2}
    for seq in range(3):
        feed(s, "alarms", [{**gap, "seq": seq, "id": str(seq)}])
    assert len(s.events) == 2  # bounded
    # The gateway raises and clears anomaly findings per quantity of a channel.
    def stuck(state: str, qty: str, t: float) -> dict[str, Any]:
        return alarm(state, kind="stuck_value", t=t, quantity=qty, value=13.919,
                     baseline=13.919, score=30.0)
    feed(s, "alarms", [stuck("raised", "voltage", T0), stuck("raised", "current", T0)])
    assert len(s.open_alarms) == 2
    text = frame_text(s)
    assert "1 open alarms" in text and "mtr-0001 ch0" in text and "current, voltage" in text
    feed(s, "alarms", [stuck("cleared", "voltage", T0 + 5)])
    assert list(s.open_alarms) == [("stuck_value", "mtr-0001", "0", "current")]
    assert "stuck at 13.919 A" in frame_text(s)
    feed(s, "alarms", [alarm("raised", kind="anomaly", quantity="power", value=215.55,
                             baseline=285.43, score=7.1)])
    assert "215.55 W vs 285.43 W (score 7.1)" in frame_text(s)


def test_a_silent_device_is_stale_after_three_periods() -> None:
    s = MonitorState()
    feed(s, "readings", [reading("mtr-0001", 1, period_ms=1000)], T0)
    dev = s.devices["mtr-0001"]
    assert not s.stale(dev, T0 + 2.9) and s.stale(dev, T0 + 3.1)
    row = next(line for line in frame_text(s, T0 + 45).splitlines() if "mtr-0001" in line)
    assert "stale 45s" in row
    # A backlog replayed by the gateway is not fresh because it arrived just now.
    feed(s, "readings", [reading("mtr-0002", 1, t=T0 - 600, period_ms=1000)], T0)
    assert s.stale(s.devices["mtr-0002"], T0)


def test_sparkline_is_scaled_per_series() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == BLOCKS
    assert sparkline([100, 200]) == sparkline([1000, 1001]) == "▁█"
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([1, None, 3]) == "▁ █"
    assert sparkline([9, 0, 1, 2], width=2) == "▁█"
    assert sparkline([]) == "" and sparkline([None]) == " "


def test_cbor_status_health_and_garbage() -> None:
    s = MonitorState()
    s.feed(f"{BASE}/readings", cbor2.dumps([reading("mtr-0001", 1)]), "application/cbor",
           T0)
    s.feed(f"{BASE}/readings", cbor2.dumps([reading("mtr-0002", 1)]), None, T0)  # MQTT 3
    assert set(s.devices) == {"mtr-0001", "mtr-0002"}
    s.feed(f"{BASE}/readings", b"\xff\x00garbage", None, T0)
    feed(s, "readings", [{"seq": 1}, "x"])
    assert s.counts["bad_messages"] == 1 and s.counts["bad_records"] == 2
    feed(s, "status", {"state": "online", "gateway": "gw-1", "since": int(T0)})
    feed(s, "health", health())
    gw = s.gateways["gw-1"]
    assert gw.status == "online" and gw.health is not None and gw.health_time == T0
    s.feed(f"{BASE}/status", b"", None, T0)  # retained message removed
    assert gw.status == "unknown"


def test_malformed_figures_and_evidence_never_break_the_frame() -> None:
    s = MonitorState()
    feed(s, "health", {"store": "full", "uplink": {"delivered": "many", "inflight": 2},
                       "ingest": {"rejected": {"bad_mac": "x", "stale": 1}}, "time": 5})
    feed(s, "alarms", [{"type": "alarm", "state": "raised", "kind": "non_technical_loss",
                        "feeder": "F1", "loss": "lots", "time": "yesterday"},
                       {"type": "alarm", "state": "maybe", "kind": "x"}])
    feed(s, "readings", [{"device": "d", "boot": 1, "seq": 1, "period_ms": "soon",
                          "channels": [{"channel": 0, "status": "ok", "voltage_v": "high",
                                        "power_w": {"mean": None}}, {"channel": "x"}]}])
    text = frame_text(s)
    assert "? delivered · 2 in flight" in text and "1 rejected · stale 1" in text
    assert "feeder F1" in text and "loss lots" in text and "1 bad" in text
    assert s.devices["d"].channels[0].values == {} and s.devices["d"].period_s == 10.0


def test_devices_collapse_to_one_row_each_when_channels_do_not_fit() -> None:
    s = dashboard_state()
    batch = []
    for i in range(20):
        r = reading(f"mtr-{i + 10:03d}", 1)
        r["channels"] += [{**r["channels"][0], "channel": 1, "name": "pv"},
                          {"channel": 2, "name": "spare", "status": ["invalid"]}]
        batch.append(r)
    feed(s, "readings", batch)
    feed(s, "alarms", [alarm("raised", device=f"mtr-{i + 10:03d}", value=254.0,
                             threshold=253.0) for i in range(8)])
    text = frame_text(s, T0, height=40)
    lines = text.splitlines()
    assert len(lines) <= 40 and "more (first" not in text  # all 23 devices, one row each
    rows = [line for line in lines if line.startswith("mtr-")]
    assert len(rows) == 23
    assert "mtr-010 +2 ch" in text and "spare invalid" in text
    assert "+4 more" in text  # of the 9 open alarms


# -- one frame ------------------------------------------------------------------------
def dashboard_state() -> MonitorState:
    s = MonitorState()
    s.broker, s.connected = "127.0.0.1:1883", True
    for k in range(30):
        feed(s, "readings", [reading(f"mtr-{i:04d}", k, T0 - 300 + 10 * k,
                                     watts=500 + (k * (i + 3)) % 700) for i in range(1, 4)],
             T0 - 300 + 10 * k)
    feed(s, "readings", [reading("mtr-0002", 30, flags=("invalid", "crc_error"))])
    feed(s, "alarms", [alarm("raised", device="mtr-0003", t=T0 - 60, value=254.1,
                             threshold=253.0)])
    feed(s, "status", {"state": "online", "gateway": "gw-1", "since": int(T0 - 3600)})
    feed(s, "health", health())
    return s


def test_render_one_frame() -> None:
    text = frame_text(dashboard_state(), T0 + 1)
    print(text)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 120
    assert "3 devices" in text and "1 open alarms" in text
    rows = {line.split()[0]: line for line in lines if line.startswith("mtr-")}
    assert set(rows) == {"mtr-0001", "mtr-0002", "mtr-0003"}
    assert "230.1" in rows["mtr-0001"] and "5.00" in rows["mtr-0001"]
    assert "0.99" in rows["mtr-0001"] and "1.234" in rows["mtr-0001"]
    assert any(c in rows["mtr-0001"] for c in BLOCKS)
    assert "invalid crc_error" in rows["mtr-0002"] and "230.1" not in rows["mtr-0002"]
    alarm_line = next(line for line in lines if "over_voltage" in line and "since" not in line)
    assert "mtr-0003 ch0" in alarm_line and "254.1 V (limit 253)" in alarm_line
    assert "gateway gw-1" in text and "online since" in text
    assert "12 telemetry · 1 alarms" in text and "836 delivered · 1 in flight" in text
    assert "840 accepted · 3 missing" in text and "bad_mac 2" in text


def test_many_devices_show_the_first_rows_and_say_how_many_more() -> None:
    s = dashboard_state()
    feed(s, "readings", [reading(f"mtr-{i:04d}", 1) for i in range(10, 60)])
    text = frame_text(s, T0, height=40)
    assert len(text.splitlines()) <= 40
    shown = [line.split()[0] for line in text.splitlines() if line.startswith("mtr-")]
    assert shown == sorted(shown) and shown[0] == "mtr-0001"
    assert f"+{53 - len(shown)} more" in text


# -- the command ----------------------------------------------------------------------
def monitor_cmd(port: int, out: Path, duration: float) -> list[str]:
    return [sys.executable, "-m", "tools.cli", "monitor", "--port", str(port),
            "--duration", str(duration), "--snapshot", str(out), "--refresh", "5"]


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id="test-gateway")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_monitor_command_against_mosquitto(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    pub = publisher(broker.port)
    out = tmp_path / "frame.txt"
    try:
        pub.publish(f"{BASE}/status", json.dumps({"state": "online", "gateway": "gw-1",
                                                  "since": iso_ms(int(time.time() * 1000))}),
                    qos=1, retain=True).wait_for_publish(5)
        pub.publish(f"{BASE}/health", json.dumps(health(4242, time.time())), qos=1,
                    retain=True).wait_for_publish(5)
        proc = subprocess.Popen(monitor_cmd(broker.port, out, 3), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        cbor = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        cbor.ContentType = "application/cbor"
        deadline = time.monotonic() + 15
        seq = 0
        # As a gateway would, for as long as the monitor runs (however long it takes to
        # start): readings, one of them CBOR, an alarm that stays and one that clears.
        while proc.poll() is None and time.monotonic() < deadline:
            now = time.time()
            batch = [reading("mtr-0001", seq, now, watts=1000 + 50 * seq),
                     reading("mtr-0002", seq, now, flags=("invalid",))]
            pub.publish(f"{BASE}/readings", json.dumps(batch), qos=1)
            pub.publish(f"{BASE}/readings", cbor2.dumps([reading("mtr-0003", seq, now)]),
                        qos=1, properties=cbor)
            pub.publish(f"{BASE}/alarms", json.dumps([
                alarm("raised", device="mtr-0001", t=now, value=262.0, threshold=253.0),
                alarm("raised", kind="low_power_factor", device="mtr-0003", t=now),
                alarm("cleared", kind="low_power_factor", device="mtr-0003", t=now)]), qos=1)
            seq += 1
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        pub.loop_stop()
        pub.disconnect()
        broker.stop()
    assert proc.returncode == 0, stderr.decode()
    text = out.read_text()
    print(text)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("mtr-")}
    assert set(rows) == {"mtr-0001", "mtr-0002", "mtr-0003"}
    assert "230.1" in rows["mtr-0001"] and "invalid" in rows["mtr-0002"]
    assert "230.1" in rows["mtr-0003"]  # the CBOR batch
    assert "open alarms (1)" in text and "262 V (limit 253)" in text
    assert "cleared" in text and "low_power_factor" in text
    assert "gateway gw-1" in text and "online since" in text and "4242 delivered" in text
    assert "connected" in text.splitlines()[0] and "disconnected" not in text
    assert " bad" not in text.splitlines()[0]  # every message decoded
    assert b"mtr-0001" in stdout  # not a terminal: the final frame is printed once


def run_on_a_terminal(cmd: list[str], sig: signal.Signals) -> tuple[int, bytes]:
    """Run cmd on a 120x40 pseudo-terminal, send sig once it has drawn a connected frame."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()

    def read() -> None:  # keep the terminal drained, or the dashboard blocks writing
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                out.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: re.search(rb"(?<!dis)connected", out), 15), bytes(out)
        proc.send_signal(sig)
        status = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    os.close(master)
    return status, bytes(out)


def test_ctrl_c_and_sigterm_stop_cleanly_on_a_terminal(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        results = {sig: run_on_a_terminal([
            sys.executable, "-m", "tools.cli", "monitor", "--port", str(broker.port),
            "--snapshot", str(tmp_path / f"{sig.name}.txt")], sig)
            for sig in (signal.SIGINT, signal.SIGTERM)}
    finally:
        broker.stop()
    assert results[signal.SIGINT][0] == 130 and results[signal.SIGTERM][0] == 0
    for sig, (_, out) in results.items():
        assert b"Traceback" not in out
        assert out.rstrip().endswith(b"\x1b[?25h")  # the cursor is back
        assert "gridedge monitor" in (tmp_path / f"{sig.name}.txt").read_text()


def test_monitor_command_says_when_it_cannot_connect(tmp_path: Path) -> None:
    out = subprocess.run(monitor_cmd(free_port(), tmp_path / "x.txt", 1),
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("gridedge monitor: cannot")
    assert not (tmp_path / "x.txt").exists()


def test_monitor_verifies_the_broker_over_tls(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra="\n".join([
        f"listener {tls_port} 127.0.0.1", f"cafile {pki.ca_pem}",
        f"certfile {pki.server_cert}", f"keyfile {pki.server_key}", ""])).start()
    try:
        wrong = subprocess.run([*monitor_cmd(tls_port, tmp_path / "a.txt", 1), "--tls", "--ca",
                                str(other.ca_pem)], capture_output=True, text=True, timeout=20)
        right = subprocess.run([*monitor_cmd(tls_port, tmp_path / "b.txt", 1), "--tls", "--ca",
                                str(pki.ca_pem)], capture_output=True, text=True, timeout=20)
    finally:
        broker.stop()
    assert wrong.returncode == 1 and "certificate verify failed" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    assert right.returncode == 0, right.stderr
    assert " connected" in (tmp_path / "b.txt").read_text().splitlines()[0]


def test_monitor_through_the_real_gateway(
    tmp_path: Path, local: Mosquitto, cloud: Mosquitto
) -> None:
    devices = ["mtr-0000", "mtr-0001"]
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, devices,
                               extra="[checks.limits]\nmin_duration_s = 0\n",
                               health_interval_s=0.5))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    out = tmp_path / "frame.txt"
    try:
        proc = subprocess.Popen(monitor_cmd(cloud.port, out, 60), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        assert wait_for(lambda: "as gridedge-monitor-" in
                        (tmp_path / "cloud" / "mosquitto.log").read_text(), 15)
        for seq in range(10):
            pub.publish(devices[0], frame(devices[0], seq, volts=262.0 if seq >= 5 else None))
            pub.publish(devices[1], frame(devices[1], seq))
            time.sleep(0.2)
        time.sleep(1.0)  # the uplink's batch delay, a health message, a refresh
        proc.terminate()  # SIGTERM: a clean stop, the snapshot written
        _, stderr = proc.communicate(timeout=20)
    finally:
        pub.close()
        gw.terminate()
    assert proc.returncode == 0, stderr.decode()
    text = out.read_text()
    print(text)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("mtr-")}
    assert set(rows) == set(devices)
    assert "262.0" in rows["mtr-0000"] and "sub-1/F1" in rows["mtr-0001"]
    assert "over_voltage" in text and "mtr-0000 ch0" in text and "(limit 253)" in text
    assert "gateway gw-test" in text and "online since" in text and "accepted" in text


@pytest.mark.parametrize("args", [["--duration", "0"], ["--refresh", "-1"]])
def test_monitor_rejects_bad_options(args: list[str]) -> None:
    from tools.cli import main

    assert main(["monitor", *args]) == 2


def test_relay_states_show_on_the_devices_row() -> None:
    """A reading's relays (a board with relay outputs): an open one stands out on its
    device's row, a closed one is dim; a device without relays shows none; garbage in
    the field shows nothing and breaks nothing."""
    state = MonitorState()
    with_relay = dict(reading("mtr-0001", 1), relays={"load": False})
    feed(state, "readings", [with_relay, reading("mtr-0002", 1),
                             dict(reading("mtr-0003", 1), relays=["load", 7])])
    rows = {line.split()[0]: line for line in frame_text(state, T0 + 1).splitlines()
            if line.startswith("mtr-")}
    assert "relay load OFF" in rows["mtr-0001"]
    assert "relay" not in rows["mtr-0002"] and "relay" not in rows["mtr-0003"]
    feed(state, "readings", [dict(reading("mtr-0001", 2), relays={"load": True})])
    rows = {line.split()[0]: line for line in frame_text(state, T0 + 2).splitlines()
            if line.startswith("mtr-")}
    assert "relay load on" in rows["mtr-0001"]
