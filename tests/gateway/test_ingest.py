"""MQTT ingest in-process against a real Mosquitto: batched PUBACKs, read-ahead, sessions.

The ingest sends the PUBACKs of a committed batch in one write and reads the broker
socket through a read-ahead buffer (both through paho internals, for throughput). These
tests hold the behaviour that matters to users: every frame is stored once, every stored
frame is acknowledged (the broker has nothing left to redeliver after a restart), and a
frame is never acknowledged before its commit.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import LocalBroker
from gateway.store import Store
from tests.support.brokers import Mosquitto, free_port
from tests.support.certs import PKI, make_pki
from tests.support.fwrunner import REPO
from tests.support.gateway_fixtures import (
    LOCAL_BROKER_EXTRA,
    DevicePublisher,
    frame,
    leftovers,
    start_ingest,
    stored,
)
from tests.support.mqtt_capture import wait_for

DEVICES = ["mtr-1", "mtr-2", "mtr-3"]


def test_every_frame_stored_once_and_acknowledged_in_batches(
    tmp_path: Path, local: Mosquitto
) -> None:
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe, ingest = start_ingest(store, local.port, DEVICES)
    pub = DevicePublisher(local.port)
    try:
        # The paho hooks this module relies on are in effect (else: slower, still correct).
        assert hasattr(ingest.client, "_packet_queue")
        assert type(ingest.client._sock).__name__ == "ReadAhead"
        expected = [(d, 1, s) for s in range(400) for d in DEVICES]
        for d, _, s in expected:
            pub.publish(d, frame(d, s))
        assert wait_for(lambda: len(stored(store)) == len(expected), 30), len(stored(store))
        assert stored(store) == expected  # in order, none twice
        assert pipe.accepted == len(expected) and sum(pipe.rejected.values()) == 0
        assert pipe.commits < len(expected)  # some batches held several frames (and PUBACKs)
    finally:
        pub.close()
        ingest.stop()
        pipe.stop()
    # Every frame was acknowledged: the session holds nothing to redeliver.
    assert leftovers(local.port) == 0
    store.close()
    local.stop()


def test_nothing_is_acknowledged_before_its_commit(tmp_path: Path, local: Mosquitto) -> None:
    """A store that cannot commit: the frames stay unacknowledged at the broker and come
    back to the next session, where they are stored."""
    store = Store(tmp_path / "s.db", 10**8, 3600)
    release = threading.Event()
    real_commit = store.commit

    def blocked_commit(*args: object, **kwargs: object) -> None:
        release.wait()
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    store.commit = blocked_commit  # type: ignore[method-assign]
    pipe, ingest = start_ingest(store, local.port, DEVICES)
    submitted: list[bytes] = []
    real_submit = pipe.inbox.submit
    pipe.inbox.submit = lambda raw, source, ack=None, claimed=None: (  # type: ignore[method-assign]
        submitted.append(raw), real_submit(raw, source, ack, claimed))[-1]
    pub = DevicePublisher(local.port)
    for s in range(20):
        pub.publish("mtr-1", frame("mtr-1", s))
    pub.close()
    assert wait_for(lambda: len(submitted) == 20, 10)  # all handed over, none committed
    ingest.stop()  # the gateway goes away with the batch uncommitted
    assert leftovers(local.port) == 20  # all of them are still the broker's
    release.set()
    pipe.stop()
    store.close()
    local.stop()


@dataclass
class DocumentedBroker:
    broker: Mosquitto
    tls_port: int
    pki: PKI
    lines: list[str]

    @property
    def port(self) -> int:
        return self.broker.port


def documented_broker(folder: Path) -> DocumentedBroker:
    """docs/gateway.md's mosquitto.conf as written there, on a real Mosquitto. Only the
    machine's specifics change: free ports for 1883 and 8883, this test's certificates and
    password file for the /etc paths; the test adds where the broker keeps its database and
    log (and, as root, runs it as root)."""
    text = (REPO / "docs" / "gateway.md").read_text()
    block = text.split("/etc/mosquitto/conf.d/gridedge.conf`:\n\n```\n", 1)[1].split("```")[0]
    folder.mkdir(parents=True, exist_ok=True)
    pki = make_pki(folder / "pki")
    passwd = folder / "gridedge.passwd"
    for i, (user, pw) in enumerate((("gateway", "gw-pass"), ("meters", "meter-pass"))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                        user, pw], check=True, capture_output=True, timeout=30)
    port, tls_port = free_port(), free_port()
    conf = (block.replace("listener 1883 ", f"listener {port} ")
            .replace("listener 8883", f"listener {tls_port}")
            .replace("/etc/mosquitto/ca_certificates/gridedge-ca.pem", str(pki.ca_pem))
            .replace("/etc/mosquitto/certs/gateway.crt", str(pki.server_cert))
            .replace("/etc/mosquitto/certs/gateway.key", str(pki.server_key))
            .replace("/etc/mosquitto/gridedge.passwd", str(passwd)))
    conf += f"persistence_location {folder}/\nlog_dest file {folder / 'mosquitto.log'}\n"
    if os.geteuid() == 0:
        conf += "user root\n"
    broker = Mosquitto(folder, conf=conf, port=port).start()
    return DocumentedBroker(broker, tls_port, pki, block.splitlines())


def _client(name: str, broker: DocumentedBroker, user: str | None, pw: str | None,
            tls: bool) -> tuple[mqtt.Client, mqtt.ReasonCode | None]:
    """A connected client (or the broker's refusal: the reason code, client not started)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    answer: list[mqtt.ReasonCode] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: answer.append(rc)
    if user is not None:
        c.username_pw_set(user, pw)
    if tls:
        c.tls_set(ca_certs=str(broker.pki.ca_pem))
    c.connect("127.0.0.1", broker.tls_port if tls else broker.port)
    c.loop_start()
    assert wait_for(lambda: answer, 10), f"{name}: no CONNACK"
    return c, answer[0]


def test_the_documented_local_broker_config_runs_and_refuses_oversized_messages(
        tmp_path: Path) -> None:
    """docs/gateway.md's mosquitto.conf, as written there, on a real Mosquitto (the
    snippet used to be `listener 1883` alone, which Mosquitto 2 runs refusing every client):
    anonymous clients are refused; the gateway logs in on the loopback listener, meters
    over TLS; a payload over 16 KiB never reaches a subscriber while a frame-sized one
    does."""
    doc = documented_broker(tmp_path / "b")
    assert "persistence true" in doc.lines and "autosave_interval 1" in doc.lines
    for setting in LOCAL_BROKER_EXTRA.splitlines():
        assert setting in doc.lines, setting
    anonymous, refused = _client("anon", doc, None, None, tls=False)
    anonymous.loop_stop()
    assert refused is not None and refused.is_failure, refused
    got: list[int] = []
    sub, ok = _client("doc-sub", doc, "gateway", "gw-pass", tls=False)
    meter, ok2 = _client("doc-meter", doc, "meters", "meter-pass", tls=True)
    try:
        assert ok is not None and not ok.is_failure and ok2 is not None and not ok2.is_failure
        sub.on_message = lambda _c, _u, m: got.append(len(m.payload))
        sub.subscribe("t", qos=1)
        time.sleep(0.3)
        for size in (20_000, 1024):
            meter.publish("t", bytes(size), qos=1).wait_for_publish(10)
        assert wait_for(lambda: got, 5)
        time.sleep(0.3)
        assert got == [1024]
    finally:
        for c in (sub, meter):
            c.loop_stop()
            c.disconnect()
        doc.broker.stop()


def test_the_documented_broker_keeps_the_gateways_frames_through_a_sigkill(
        tmp_path: Path) -> None:
    """With the documented config (autosave_interval 1) a broker killed with SIGKILL
    keeps the gateway's session and the frames it acknowledged to meters more than a
    second before: Mosquitto's default (a snapshot every 30 minutes) lost both."""
    doc = documented_broker(tmp_path / "b")
    local = doc.broker
    gateway = LocalBroker(port=local.port, client_id="ingest-test", username="gateway",
                          password="gw-pass")
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe, ingest = start_ingest(store, local.port, ["mtr-1"], gateway)
    ingest.stop()  # the gateway goes away: its session is the broker's to keep
    pipe.stop()
    pub = DevicePublisher(local.port, login=("meters", "meter-pass"))
    for s in range(20):
        pub.publish("mtr-1", frame("mtr-1", s))
    pub.close()
    time.sleep(2.5)  # a snapshot or two
    assert local.proc is not None
    local.proc.kill()  # SIGKILL: no save at exit
    local.proc.wait()
    local.start()
    pipe, ingest = start_ingest(store, local.port, ["mtr-1"], gateway)
    try:
        assert wait_for(lambda: len(stored(store)) == 20, 15), stored(store)
    finally:
        ingest.stop()
        pipe.stop()
        store.close()
        local.stop()
