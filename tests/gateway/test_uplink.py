"""The uplink against real Mosquitto: mutual TLS, protocol versions, CBOR, a half-open link."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.brokers import Mosquitto, free_port
from tests.support.certs import make_pki
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
)
from tests.support.mqtt_capture import Capture, wait_for
from tests.support.tcp_proxy import FreezableProxy

DEVICES = ["mtr-1", "mtr-2"]


class V5Capture:
    """An MQTT v5 subscriber that keeps each message's content type."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, str | None]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload),
                                  getattr(msg.properties, "ContentType", None)))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish_rounds(pub: DevicePublisher, seqs: range) -> set[tuple[str, int, int]]:
    for seq in seqs:
        for d in DEVICES:
            pub.publish(d, frame(d, seq))
    return {(d, 1, s) for d in DEVICES for s in seqs}


def test_mutual_tls_refuses_a_wrong_ca_then_delivers_everything_as_cbor(
    tmp_path: Path, local: Mosquitto
) -> None:
    """Verification is on: a gateway holding the wrong CA never connects (and keeps the
    readings); with the right CA and its client certificate, over MQTT 3.1.1 with CBOR
    payloads, every reading arrives."""
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-pki")
    tls_port = free_port()
    cloud = Mosquitto(tmp_path / "cloud", extra="\n".join([  # plain listener for the capture
        f"listener {tls_port} 127.0.0.1", f"cafile {pki.ca_pem}",
        f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        "require_certificate true", "use_identity_as_username true", ""])).start()
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    cfg = tmp_path / "gw.toml"

    def configure(ca: Path) -> None:
        cfg.write_text(config_text(
            tmp_path / "state", local, cloud, DEVICES, port=tls_port, tls=True,
            ca_file=str(ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key),
            protocol="mqtt311", format="cbor", backoff_min_s=0.2, backoff_max_s=1.0))

    configure(other.ca_pem)
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        expected = publish_rounds(pub, range(0, 20))
        assert wait_for(lambda: "certificate verify failed" in
                        (tmp_path / "gw.log").read_text(), 10)
        assert capture.payloads("/readings") == []
        assert gw.terminate() == 0
        configure(pki.ca_pem)
        gw.start()
        expected |= publish_rounds(pub, range(20, 40))

        def seen() -> set[tuple[str, int, int]]:
            return {(r["device"], r["boot"], r["seq"]) for p in capture.payloads("/readings")
                    for r in cbor2.loads(p)}

        assert wait_for(lambda: seen() == expected, 20), len(expected - seen())
        sample = cbor2.loads(capture.payloads("/readings")[0])[0]
        assert sample["channels"][0]["voltage_v"]["max"] == 231.0
    finally:
        pub.close()
        gw.terminate()
        capture.close()
        cloud.stop()
    broker_log = (tmp_path / "cloud" / "mosquitto.log").read_text()
    assert "as gridedge-gw-test (p2," in broker_log  # MQTT 3.1.1, as configured


def test_half_open_link_is_dropped_after_ack_timeout(
    tmp_path: Path, local: Mosquitto, cloud: Mosquitto
) -> None:
    """The link to the cloud freezes without closing. PUBACKs stop; after ack_timeout_s
    the uplink drops the connection, reconnects, resends what was unacknowledged, and
    every reading arrives (MQTT 5, JSON with its content type)."""
    proxy = FreezableProxy(cloud.port)
    capture = V5Capture(cloud.port, "gridedge/v1/gw/+/readings")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, port=proxy.port,
                               ack_timeout_s=1.0, backoff_min_s=0.2, backoff_max_s=1.0))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)

    def seen() -> set[tuple[str, int, int]]:
        with capture.lock:
            return {(r["device"], r["boot"], r["seq"]) for _t, p, _c in capture.messages
                    for r in json.loads(p)}

    try:
        expected = publish_rounds(pub, range(0, 10))
        assert wait_for(lambda: seen() == expected, 10)
        proxy.freeze()
        expected |= publish_rounds(pub, range(10, 30))
        assert wait_for(lambda: "half-open" in (tmp_path / "gw.log").read_text(), 10)
        assert wait_for(lambda: seen() == expected, 20), len(expected - seen())
        assert proxy.connections >= 2
        assert {c for _t, _p, c in capture.messages} == {"application/json"}
    finally:
        pub.close()
        gw.terminate()
        capture.close()
        proxy.close()
    assert "as gridedge-gw-test (p5," in (tmp_path / "cloud" / "mosquitto.log").read_text()


def test_a_refused_puback_keeps_the_records_until_the_broker_takes_them(
    tmp_path: Path, local: Mosquitto
) -> None:
    """MQTT 5 brokers can answer a PUBLISH with an error PUBACK (here: not authorised by
    the ACL). That is not a delivery: the records stay and are resent once allowed."""
    acl = tmp_path / "acl"
    acl.write_text("topic write gridedge/v1/gw/+/status\ntopic read gridedge/#\n")
    cloud = Mosquitto(tmp_path / "cloud", extra=f"acl_file {acl}\n").start()
    capture = Capture(cloud.port, topic="gridedge/v1/gw/+/readings")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, backoff_min_s=0.2,
                               backoff_max_s=1.0))
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        expected = publish_rounds(pub, range(0, 10))
        assert wait_for(lambda: "refused a message" in log.read_text(), 10)
        assert capture.payloads("/readings") == []
        acl.write_text("topic readwrite gridedge/#\n")
        assert cloud.proc is not None
        cloud.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL

        def seen() -> set[tuple[str, int, int]]:
            return {(r["device"], r["boot"], r["seq"]) for p in capture.payloads("/readings")
                    for r in json.loads(p)}

        assert wait_for(lambda: seen() == expected, 20), len(expected - seen())
    finally:
        pub.close()
        gw.terminate()
        capture.close()
        cloud.stop()


def test_a_cloud_link_that_cannot_work_is_said_once_and_shown_in_status(
    tmp_path: Path, local: Mosquitto
) -> None:
    """TLS off against a TLS-only port (the broker waits for a handshake that never
    comes, then drops the connection) and a refused client certificate: each is one log
    line naming the cause while it lasts, not one per retry, and status shows it."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    cloud = Mosquitto(tmp_path / "cloud", extra="\n".join([
        f"listener {tls_port} 127.0.0.1", f"cafile {pki.ca_pem}",
        f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        "require_certificate true", ""])).start()
    metrics_port = free_port()
    cfg = tmp_path / "gw.toml"
    log = tmp_path / "gw.log"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, metrics_port,
                               port=tls_port, tls=False, backoff_min_s=0.2,
                               backoff_max_s=1.0))
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    try:
        hint = "(a TLS-only port? uplink.tls is off)"
        assert wait_for(lambda: hint in log.read_text(), 30), log.read_text()[-2000:]
        time.sleep(8)  # several more attempts
        assert log.read_text().count(hint) == 1
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--config", str(cfg)],
            capture_output=True, text=True, check=True).stdout)["daemon"]["uplink"]
        assert status["state"] == "disconnected" and hint in status["error"], status
        assert gw.terminate() == 0
        # TLS on, but no client certificate for a broker that requires one.
        cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, metrics_port,
                                   port=tls_port, tls=True, ca_file=str(pki.ca_pem),
                                   backoff_min_s=0.2, backoff_max_s=1.0))
        before = len(log.read_text())
        gw.start(wait_subscribed=True)
        assert wait_for(lambda: "uplink cannot reach the cloud broker" in
                        log.read_text()[before:], 20), log.read_text()[before:]
        time.sleep(5)
        assert log.read_text()[before:].count("uplink cannot reach the cloud broker") == 1
    finally:
        gw.terminate()
        cloud.stop()
