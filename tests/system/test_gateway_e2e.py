"""End to end: devices -> local Mosquitto -> gateway process -> cloud Mosquitto -> backend."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import Mosquitto, free_port
from tests.support.gateway_fixtures import (
    LOCAL_BROKER_EXTRA,
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
    metrics,
)
from tests.support.mqtt_capture import Capture, wait_for

DEVICES = [f"mtr-{i:04d}" for i in range(5)]


@pytest.fixture
def brokers(tmp_path: Path):  # type: ignore[no-untyped-def]
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    cloud = Mosquitto(tmp_path / "cloud").start()
    yield local, cloud
    local.stop()
    cloud.stop()


def identities(capture: Capture) -> Counter[tuple[str, int, int]]:
    seen: Counter[tuple[str, int, int]] = Counter()
    for payload in capture.payloads("/readings"):
        for r in json.loads(payload):
            seen[(r["device"], r["boot"], r["seq"])] += 1
    return seen


def status(config: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--config",
                          str(config)], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def start_all(
    tmp_path: Path, local: Mosquitto, cloud: Mosquitto, metrics_port: int = 0,
    **uplink: object,
) -> tuple[Path, Capture, GatewayProcess, DevicePublisher]:
    """Config, a cloud subscriber, the gateway (subscribed), a device publisher."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, metrics_port,
                               **uplink))
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    return cfg, capture, gw, DevicePublisher(local.port)


def test_every_reading_arrives_once(tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    port = free_port()
    cfg, capture, gw, pub = start_all(tmp_path, *brokers, metrics_port=port,
                                      health_interval_s=0.2)
    try:
        for seq in range(100):
            for d in DEVICES:
                pub.publish(d, frame(d, seq))
        # Bad input on the way: garbage, a forged MAC, an unknown device, a duplicate, and
        # one device's genuine new frame on another device's topic (docs/protocol.md §6).
        pub.publish(DEVICES[0], b"\x00garbage")
        pub.publish(DEVICES[0], frame(DEVICES[0], 500, key=bytes(32)))  # forged MAC
        pub.publish("stranger", frame("stranger", 1))  # unknown device
        pub.publish(DEVICES[1], frame(DEVICES[1], 99))  # a duplicate
        pub.publish(DEVICES[0], frame(DEVICES[2], 600))  # valid MAC, wrong topic
        everything = {(d, 1, s) for d in DEVICES for s in range(100)}
        assert wait_for(lambda: len(identities(capture)) == 500, 30), (
            sorted(everything - set(identities(capture))), metrics(port),
            (tmp_path / "gw.log").read_text()[-3000:])
        time.sleep(0.5)
        seen = identities(capture)
        assert set(seen) == {(d, 1, s) for d in DEVICES for s in range(100)}
        assert max(seen.values()) == 1  # nothing twice on the normal path
        sample = json.loads(capture.payloads("/readings")[0])[0]
        assert sample["site"] == "sub-1" and sample["channels"][0]["voltage_v"]["max"] == 231.0
        assert capture.payloads("/status")[0].startswith(b'{"state": "online"')
        m = metrics(port)
        assert m["gridedge_frames_accepted_total"] == 500
        for reason in ("malformed", "bad_mac", "unknown_device", "duplicate", "wrong_source"):
            assert m.get(f'gridedge_frames_rejected_total{{reason="{reason}"}}') == 1, (
                reason, {k: v for k, v in m.items() if k.startswith("gridedge")})
        assert m["gridedge_uplink_connected"] == 1
        assert m["gridedge_uplink_delivered_total"] == 500

        def health() -> dict[str, Any]:
            latest: dict[str, Any] = json.loads(capture.payloads("/health")[-1])
            return latest

        assert wait_for(lambda: health()["uplink"]["delivered"] == 500, 5), health()
        h = health()
        assert h["gateway"] == "gw-test" and h["ingest"]["accepted"] == 500
        assert h["ingest"]["rejected"] == {"malformed": 1, "bad_mac": 1, "unknown_device": 1,
                                           "duplicate": 1, "wrong_source": 1}
        assert h["store"]["telemetry"] == 0 and h["open_alarms"] == 0
    finally:
        pub.close()
        code = gw.terminate()
        capture.close()
    assert code == 0
    st = status(cfg)
    assert st["telemetry"] == 0 and st["alarms"] == 0  # all delivered, store empty
    log = (tmp_path / "gw.log").read_text()
    assert "gateway stopped cleanly" in log


def test_sigkill_under_load_loses_nothing(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]
) -> None:
    """The gateway is SIGKILLed three times while devices publish; every reading the local
    broker acknowledged reaches the cloud (some twice: the cloud de-duplicates)."""
    _cfg, capture, gw, pub = start_all(tmp_path, *brokers)
    total = 0
    try:
        for round_ in range(4):
            for seq in range(round_ * 150, (round_ + 1) * 150):
                for d in DEVICES:
                    pub.publish(d, frame(d, seq))
                    total += 1
            if round_ < 3:
                time.sleep(0.05)
                gw.kill()
                gw.start()
        expected = {(d, 1, s) for d in DEVICES for s in range(600)}
        assert wait_for(lambda: len(identities(capture)) == total, 60), (
            len(identities(capture)), total, sorted(expected - set(identities(capture)))[:10],
            (tmp_path / "gw.log").read_text()[-3000:])
    finally:
        pub.close()
        gw.terminate()
        capture.close()
    seen = identities(capture)
    assert set(seen) == {(d, 1, s) for d in DEVICES for s in range(600)}


def test_alarms_go_first_and_reach_the_cloud(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = brokers
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES,
                               extra="[checks.limits]\nmin_duration_s = 0\n"))
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        for seq, volts in enumerate([230.0, 262.0, 262.5, 231.0]):
            pub.publish(DEVICES[2], frame(DEVICES[2], seq, volts=volts))
        assert wait_for(lambda: len(capture.payloads("/alarms")) >= 2, 20)
        alarms = [a for p in capture.payloads("/alarms") for a in json.loads(p)
                  if a["kind"] == "over_voltage"]  # (it goes offline after 3 s, too)
        assert [(a["kind"], a["state"]) for a in alarms] == [
            ("over_voltage", "raised"), ("over_voltage", "cleared")]
        assert alarms[0]["device"] == DEVICES[2] and alarms[0]["value"] == 262.0
        assert alarms[0]["site"] == "sub-1" and alarms[0]["id"]
    finally:
        pub.close()
        gw.terminate()
        capture.close()


def test_cloud_and_local_broker_restarts_lose_nothing(tmp_path: Path, local: Mosquitto) -> None:
    """The cloud broker goes away for a while under load (the store holds the backlog and
    the uplink resends what was unacknowledged), then the local broker restarts (its
    persistent session keeps the gateway's queue): every reading still arrives. Both
    brokers persist sessions, so the backend's subscription survives the cloud restart."""
    cloud = Mosquitto(tmp_path / "cloud", persistence=True).start()
    _cfg, capture, gw, pub = start_all(tmp_path, local, cloud)
    try:
        for seq in range(0, 100):
            for d in DEVICES:
                pub.publish(d, frame(d, seq))
        cloud.stop()
        for seq in range(100, 200):  # stored at the gateway while the cloud is away
            for d in DEVICES:
                pub.publish(d, frame(d, seq))
        time.sleep(2)
        cloud.start()  # the capture reconnects to its persistent session by itself
        pub.close()
        local.stop()  # now the local broker restarts
        time.sleep(1)
        local.start()
        pub = DevicePublisher(local.port)
        for seq in range(200, 250):
            for d in DEVICES:
                pub.publish(d, frame(d, seq))
        expected = {(d, 1, s) for d in DEVICES for s in range(100, 250)}
        assert wait_for(lambda: expected <= set(identities(capture)), 60), \
            len(expected - set(identities(capture)))
    finally:
        pub.close()
        gw.terminate()
        capture.close()
        cloud.stop()


def test_a_subscription_granted_at_qos0_is_reported(tmp_path: Path, cloud: Mosquitto) -> None:
    """A local broker limited to QoS 0 keeps no frames for a gateway that is down. The
    gateway says so (an error, once, naming the fix) and still takes what arrives."""
    local = Mosquitto(tmp_path / "local", extra="max_qos 0\n").start()
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, port))
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    pub = DevicePublisher(local.port, qos=0)
    try:
        assert "granted only QoS 0" in log.read_text()
        assert "subscribed to gridedge/v1/dev/+/frame (QoS 0)" in log.read_text()
        # The metrics endpoint may start a moment after the subscription.
        assert wait_for(lambda: metrics(port, missing_ok=True)
                        .get("gridedge_ingest_subscribed") == 1, 10)
        for seq in range(10):
            for d in DEVICES:
                pub.publish(d, frame(d, seq))
        expected = {(d, 1, s) for d in DEVICES for s in range(10)}
        assert wait_for(lambda: set(identities(capture)) == expected, 20)
    finally:
        pub.close()
        code = gw.terminate()
        capture.close()
        local.stop()
    assert code == 0
    assert log.read_text().count("granted only QoS 0") == 1
