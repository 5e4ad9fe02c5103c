"""MQTT ingest in-process against a real Mosquitto: batched PUBACKs, read-ahead, sessions.

The ingest sends the PUBACKs of a committed batch in one write and reads the broker
socket through a read-ahead buffer (both through paho internals, for throughput). These
tests hold the behaviour that matters to users: every frame is stored once, every stored
frame is acknowledged (the broker has nothing left to redeliver after a restart), and a
frame is never acknowledged before its commit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from brokers import Mosquitto
from gateway.store import Store
from gateway_fixtures import (
    LOCAL_BROKER_EXTRA,
    DevicePublisher,
    frame,
    leftovers,
    start_ingest,
    stored,
)
from mqtt_capture import wait_for

DEVICES = ["mtr-1", "mtr-2", "mtr-3"]


def test_every_frame_stored_once_and_acknowledged_in_batches(tmp_path: Path) -> None:
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
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


def test_nothing_is_acknowledged_before_its_commit(tmp_path: Path) -> None:
    """A store that cannot commit: the frames stay unacknowledged at the broker and come
    back to the next session, where they are stored."""
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    store = Store(tmp_path / "s.db", 10**8, 3600)
    release = threading.Event()
    real_commit = store.commit

    def blocked_commit(*args: object, **kwargs: object) -> None:
        release.wait()
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    store.commit = blocked_commit  # type: ignore[method-assign]
    pipe, ingest = start_ingest(store, local.port, DEVICES)
    submitted: list[bytes] = []
    real_submit = pipe.submit
    pipe.submit = lambda raw, source, ack=None, claimed=None: (  # type: ignore[method-assign]
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


def test_the_documented_local_broker_config_runs_and_refuses_oversized_messages(
        tmp_path: Path) -> None:
    """docs/gateway.md's mosquitto.conf, as written there, on a real Mosquitto: it is the
    configuration the tests and the demo use, and a payload over 16 KiB never reaches a
    subscriber while a frame-sized one does."""
    text = (Path(__file__).parents[1] / "docs" / "gateway.md").read_text()
    block = text.split("/etc/mosquitto/conf.d/gridedge.conf`:\n\n```\n", 1)[1].split("```")[0]
    lines = block.splitlines()
    assert lines[0] == "listener 1883" and "persistence true" in lines
    assert "autosave_interval 1" in lines  # crash-safe within a second (see the docs)
    for setting in LOCAL_BROKER_EXTRA.splitlines():
        assert setting in lines, setting
    broker = Mosquitto(tmp_path / "b", persistence=True,
                       extra="\n".join(lines[1:]) + "\n").start()
    got: list[int] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="doc-sub")
    sub.on_message = lambda _c, _u, m: got.append(len(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("t", qos=1)
    sub.loop_start()
    pub = DevicePublisher(broker.port)
    try:
        time.sleep(0.3)
        for size in (20_000, 1024):
            info = pub.client.publish("t", bytes(size), qos=1)
            info.wait_for_publish(10)
        assert wait_for(lambda: got, 5)
        time.sleep(0.3)
        assert got == [1024]
    finally:
        pub.close()
        sub.loop_stop()
        broker.stop()


def test_the_documented_broker_keeps_the_gateways_frames_through_a_sigkill(
        tmp_path: Path) -> None:
    """With the documented config (autosave_interval 1) a broker killed with SIGKILL
    keeps the gateway's session and the frames it acknowledged to meters more than a
    second before: Mosquitto's default (a snapshot every 30 minutes) lost both."""
    text = (Path(__file__).parents[1] / "docs" / "gateway.md").read_text()
    block = text.split("/etc/mosquitto/conf.d/gridedge.conf`:\n\n```\n", 1)[1].split("```")[0]
    # Persistence exactly as documented (the test broker adds none of its own).
    local = Mosquitto(tmp_path / "b", extra="\n".join(block.splitlines()[1:]) +
                      f"\npersistence_location {tmp_path / 'b'}/\n").start()
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe, ingest = start_ingest(store, local.port, ["mtr-1"])
    ingest.stop()  # the gateway goes away: its session is the broker's to keep
    pipe.stop()
    pub = DevicePublisher(local.port)
    for s in range(20):
        pub.publish("mtr-1", frame("mtr-1", s))
    pub.close()
    time.sleep(2.5)  # a snapshot or two
    assert local.proc is not None
    local.proc.kill()  # SIGKILL: no save at exit
    local.proc.wait()
    local.start()
    pipe, ingest = start_ingest(store, local.port, ["mtr-1"])
    try:
        assert wait_for(lambda: len(stored(store)) == 20, 15), stored(store)
    finally:
        ingest.stop()
        pipe.stop()
        store.close()
        local.stop()
